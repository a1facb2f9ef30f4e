"""The one place that maps a family name to its config, trainer, collator and inference class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import datasets

from rerankforge.data_tools.collators import CrossEncoderCollator, LLMCollator
from rerankforge.inference.layerwise_reranker import LayerwiseReranker
from rerankforge.inference.llm_reranker import LLMReranker
from rerankforge.inference.reranker import Reranker
from rerankforge.trainer.base_trainer import RerankerTrainer
from rerankforge.trainer.config import RerankerConfig
from rerankforge.trainer.cross_encoder_config import CrossEncoderConfig
from rerankforge.trainer.cross_encoder_trainer import CrossEncoderTrainer, build_cross_encoder_trainer
from rerankforge.trainer.evaluation import RerankEvalSet
from rerankforge.trainer.layerwise_config import LayerwiseRerankerConfig
from rerankforge.trainer.layerwise_trainer import LayerwiseRerankerTrainer, build_layerwise_trainer
from rerankforge.trainer.llm_config import LLMRerankerConfig
from rerankforge.trainer.llm_trainer import LLMRerankerTrainer, build_llm_trainer


@dataclass(frozen=True)
class Family:
    config_class: type[RerankerConfig]
    trainer_class: type[RerankerTrainer]
    collator_class: type
    build_trainer: Callable[[RerankerConfig, datasets.Dataset, RerankEvalSet | None], RerankerTrainer]
    inference_class: type


FAMILIES: dict[str, Family] = {
    "cross_encoder": Family(
        config_class=CrossEncoderConfig,
        trainer_class=CrossEncoderTrainer,
        collator_class=CrossEncoderCollator,
        build_trainer=build_cross_encoder_trainer,
        inference_class=Reranker,
    ),
    "llm": Family(
        config_class=LLMRerankerConfig,
        trainer_class=LLMRerankerTrainer,
        collator_class=LLMCollator,
        build_trainer=build_llm_trainer,
        inference_class=LLMReranker,
    ),
    "layerwise": Family(
        config_class=LayerwiseRerankerConfig,
        trainer_class=LayerwiseRerankerTrainer,
        collator_class=LLMCollator,
        build_trainer=build_layerwise_trainer,
        inference_class=LayerwiseReranker,
    ),
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}") from None

"""The family registry: one entry per reranker family, read by every layer that needs to know what a family is.

An entry names the family's parts in every layer: the saved spec and the model class (this layer, as classes),
and the parts above it (inference class, training config, Trainer, collator, the model card's usage snippets) as
``"module:attribute"`` references that the layer using a part resolves when it asks for it. That keeps the
arrows pointing one way (the model layer never imports inference, data_tools or the trainer) while a family is
still declared in exactly one place; `register_family` adds one from outside the package the same way.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rerankforge.inference.modeling.base import RerankerModel
from rerankforge.inference.modeling.cross_encoder import CrossEncoderModel
from rerankforge.inference.modeling.file_checks import CAUSAL_LM, SEQUENCE_CLASSIFIER
from rerankforge.inference.modeling.layerwise import LayerwiseRerankerModel
from rerankforge.inference.modeling.llm import LLMRerankerModel
from rerankforge.inference.modeling.spec import CrossEncoderSpec, LayerwiseSpec, LLMSpec, RerankerSpec


def resolve(reference: str) -> Any:
    """``"package.module:attribute"`` -> the attribute (the module is imported on first use)."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Family:
    name: str  # the `family` of recipes and rerankforge.json
    title: str  # in model cards: "A <title> fine-tuned with rerankforge"
    spec_class: type[RerankerSpec]
    model_class: type[RerankerModel]
    backbone: str  # the kind of checkpoint it scores with: SEQUENCE_CLASSIFIER or CAUSAL_LM
    inference: str  # "module:Class" of the inference class (its name is what error messages suggest)
    config: str  # of the training config (a TrainingArguments subclass)
    trainer: str  # of the Trainer subclass
    collator: str  # of the training and evaluation collator
    card_usage: str  # of the model card's usage snippets: (spec, repo_id, adapter) -> [(title, code)]

    @property
    def inference_class_name(self) -> str:
        return self.inference.rpartition(":")[2]

    @property
    def inference_class(self) -> type:
        return resolve(self.inference)

    @property
    def config_class(self) -> type:
        return resolve(self.config)

    @property
    def trainer_class(self) -> type:
        return resolve(self.trainer)

    @property
    def collator_class(self) -> type:
        return resolve(self.collator)

    @property
    def usage(self) -> Callable[..., list[tuple[str, str]]]:
        return resolve(self.card_usage)


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add a family (or replace one of the same name); its spec class becomes readable from rerankforge.json."""
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}") from None


register_family(Family(
    name="cross_encoder",
    title="cross-encoder reranker",
    spec_class=CrossEncoderSpec,
    model_class=CrossEncoderModel,
    backbone=SEQUENCE_CLASSIFIER,
    inference="rerankforge.inference.reranker:Reranker",
    config="rerankforge.trainer.cross_encoder_config:CrossEncoderConfig",
    trainer="rerankforge.trainer.cross_encoder_trainer:CrossEncoderTrainer",
    collator="rerankforge.data_tools.collators:CrossEncoderCollator",
    card_usage="rerankforge.trainer.model_card:cross_encoder_usage",
))  # fmt: skip
register_family(Family(
    name="llm",
    title="LLM reranker",
    spec_class=LLMSpec,
    model_class=LLMRerankerModel,
    backbone=CAUSAL_LM,
    inference="rerankforge.inference.llm_reranker:LLMReranker",
    config="rerankforge.trainer.llm_config:LLMRerankerConfig",
    trainer="rerankforge.trainer.llm_trainer:LLMRerankerTrainer",
    collator="rerankforge.data_tools.collators:LLMCollator",
    card_usage="rerankforge.trainer.model_card:llm_usage",
))  # fmt: skip
register_family(Family(
    name="layerwise",
    title="layerwise LLM reranker",
    spec_class=LayerwiseSpec,
    model_class=LayerwiseRerankerModel,
    backbone=CAUSAL_LM,
    inference="rerankforge.inference.layerwise_reranker:LayerwiseReranker",
    config="rerankforge.trainer.layerwise_config:LayerwiseRerankerConfig",
    trainer="rerankforge.trainer.layerwise_trainer:LayerwiseRerankerTrainer",
    collator="rerankforge.data_tools.collators:LLMCollator",
    card_usage="rerankforge.trainer.model_card:layerwise_usage",
))  # fmt: skip

"""The one place that maps a family name to its config, model, trainer, collator and inference class (and what
its model card shows), and the one builder that wires them into a Trainer. Each model class names its spec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import datasets

from rerankforge.data_tools.collators import CrossEncoderCollator, LLMCollator
from rerankforge.data_tools.pair_encoding import PairLengths
from rerankforge.inference.layerwise_reranker import LayerwiseReranker
from rerankforge.inference.llm_reranker import LLMReranker
from rerankforge.inference.reranker import Reranker
from rerankforge.trainer.base_trainer import RerankerTrainer, data_arguments
from rerankforge.trainer.config import RerankerConfig
from rerankforge.trainer.cross_encoder_config import CrossEncoderConfig
from rerankforge.trainer.cross_encoder_trainer import CrossEncoderTrainer
from rerankforge.trainer.evaluation import EvalPairs, RerankEvalSet
from rerankforge.trainer.layerwise_config import LayerwiseRerankerConfig
from rerankforge.trainer.layerwise_trainer import LayerwiseRerankerTrainer
from rerankforge.trainer.llm_config import LLMRerankerConfig
from rerankforge.trainer.llm_trainer import LLMRerankerTrainer
from rerankforge.trainer.model_card import cross_encoder_usage, layerwise_usage, llm_usage
from rerankforge.trainer.modeling.base import RerankerModel
from rerankforge.trainer.modeling.cross_encoder import CrossEncoderModel
from rerankforge.trainer.modeling.layerwise import LayerwiseRerankerModel
from rerankforge.trainer.modeling.llm import LLMRerankerModel
from rerankforge.trainer.modeling.lora import unwrap_adapters
from rerankforge.trainer.spec import RerankerSpec


@dataclass(frozen=True)
class Family:
    title: str  # in model cards: "A <title> fine-tuned with rerankforge"
    config_class: type[RerankerConfig]
    model_class: type[RerankerModel]
    trainer_class: type[RerankerTrainer]
    collator_class: type[CrossEncoderCollator] | type[LLMCollator]
    inference_class: type
    card_usage: Callable[[RerankerSpec, str, bool], list[tuple[str, str]]]  # the model card's snippets


FAMILIES: dict[str, Family] = {
    "cross_encoder": Family(
        title="cross-encoder reranker",
        config_class=CrossEncoderConfig,
        model_class=CrossEncoderModel,
        trainer_class=CrossEncoderTrainer,
        collator_class=CrossEncoderCollator,
        inference_class=Reranker,
        card_usage=cross_encoder_usage,
    ),
    "llm": Family(
        title="LLM reranker",
        config_class=LLMRerankerConfig,
        model_class=LLMRerankerModel,
        trainer_class=LLMRerankerTrainer,
        collator_class=LLMCollator,
        inference_class=LLMReranker,
        card_usage=llm_usage,
    ),
    "layerwise": Family(
        title="layerwise LLM reranker",
        config_class=LayerwiseRerankerConfig,
        model_class=LayerwiseRerankerModel,
        trainer_class=LayerwiseRerankerTrainer,
        collator_class=LLMCollator,
        inference_class=LayerwiseReranker,
        card_usage=layerwise_usage,
    ),
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}") from None


def build_trainer(
    config: RerankerConfig, records: datasets.Dataset, eval_set: RerankEvalSet | None = None
) -> RerankerTrainer:
    """Tokenizer, model object (with adapters), groups, collators and evaluation pairs, wired into the family's
    Trainer. Training batches use training's budgets; evaluation batches the saved model's scoring budgets."""
    family = get_family(config.family)
    tokenizer = family.model_class.load_tokenizer(config)
    model = family.model_class.for_training(config, tokenizer)
    reranker = unwrap_adapters(model)
    spec = reranker.spec
    llm_spec = spec if hasattr(spec, "input_format") else None  # the LLM families' format and prompt
    training_lengths = reranker.training_lengths(config, tokenizer)
    scoring_lengths = PairLengths(spec.query_max_len, spec.passage_max_len, spec.max_length)
    eval_pairs = EvalPairs(eval_set, columns=reranker.score_columns()) if eval_set is not None else None
    return family.trainer_class(
        model=model,
        args=config,
        **data_arguments(config, records, eval_pairs),
        data_collator=family.collator_class.for_lengths(tokenizer, training_lengths, llm_spec),
        eval_data_collator=family.collator_class.for_lengths(tokenizer, scoring_lengths, llm_spec),
        processing_class=tokenizer,
    )

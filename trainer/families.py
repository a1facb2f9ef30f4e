"""The one builder that wires a family's parts (its entry in inference/modeling/families.py) into a Trainer."""

from __future__ import annotations

import datasets

from rerankforge.inference.modeling.families import FAMILIES, Family, get_family
from rerankforge.inference.modeling.lora import unwrap_adapters
from rerankforge.inference.modeling.pair_encoding import PairLengths
from rerankforge.trainer.base_trainer import RerankerTrainer, data_arguments
from rerankforge.trainer.config import RerankerConfig
from rerankforge.trainer.evaluation import EvalPairs, RerankEvalSet


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


__all__ = ["FAMILIES", "Family", "build_trainer", "get_family"]

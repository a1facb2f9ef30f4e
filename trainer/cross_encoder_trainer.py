"""Cross-encoder training: the shared grouped loss on one logit per (query, passage) pair."""

from __future__ import annotations

import datasets
import torch
from transformers import AutoTokenizer, PreTrainedModel

from rerankforge.data_tools.collators import CrossEncoderCollator
from rerankforge.data_tools.pair_encoding import PairLengths
from rerankforge.trainer.base_trainer import RerankerTrainer, data_arguments
from rerankforge.trainer.cross_encoder_config import CrossEncoderConfig
from rerankforge.trainer.evaluation import EvalPairs, RerankEvalSet
from rerankforge.trainer.modeling.cross_encoder import load_cross_encoder, score_pairs_by_length
from rerankforge.trainer.modeling.sources import resolve_model_path
from rerankforge.trainer.spec import RerankerSpec


class CrossEncoderTrainer(RerankerTrainer):
    """Scores each pair with the classifier's single logit."""

    def score(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return score_pairs_by_length(model, batch, self.args.forward_chunks)


def build_cross_encoder_trainer(
    config: CrossEncoderConfig, records: datasets.Dataset, eval_set: RerankEvalSet | None = None
) -> CrossEncoderTrainer:
    """Model, tokenizer, groups, collator and spec for one run, wired into the Trainer."""
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model_path(config.tokenizer_name or config.model_name_or_path),
        trust_remote_code=config.trust_remote_code,
    )
    model = load_cross_encoder(config.model_name_or_path, trust_remote_code=config.trust_remote_code)
    lengths = PairLengths.for_model(config.query_max_len, config.passage_max_len, model.config, tokenizer)
    scoring_lengths = PairLengths.for_model(
        config.query_max_len,
        config.scoring_passage_max_len,
        model.config,
        tokenizer,
    )
    spec = RerankerSpec(  # inference scores with the lengths the evaluation during training used
        family="cross_encoder",
        query_max_len=scoring_lengths.query_max_len,
        passage_max_len=scoring_lengths.passage_max_len,
        max_length=scoring_lengths.max_length,
        base_model=config.model_name_or_path,
    )
    eval_pairs = EvalPairs(eval_set) if eval_set is not None else None
    return CrossEncoderTrainer(
        model=model,
        args=config,
        **data_arguments(config, records, eval_pairs),
        data_collator=CrossEncoderCollator(tokenizer, lengths),
        eval_data_collator=CrossEncoderCollator(tokenizer, scoring_lengths),
        processing_class=tokenizer,
        spec=spec,
    )

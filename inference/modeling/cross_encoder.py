"""Cross-encoder: a sequence-classification model with one logit per (query, passage) pair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rerankforge.inference.modeling.base import RerankerModel
from rerankforge.inference.modeling.pair_encoding import PairLengths
from rerankforge.inference.modeling.sources import resolve_model_path
from rerankforge.inference.modeling.spec import CrossEncoderSpec, RerankerSpec
from rerankforge.inference.modeling.training_options import EncoderTrainingOptions

MODEL_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


# what encoder configs call the dropout on attention probabilities (BERT, XLM-R, ELECTRA, DeBERTa; ModernBERT)
ATTENTION_DROPOUT_NAMES = ("attention_probs_dropout_prob", "attention_dropout")


def attention_dropout_override(
    path: str, attention_dropout: float | None, trust_remote_code: bool
) -> dict[str, float]:
    """The config attribute that sets attention dropout in this architecture, with its new value."""
    if attention_dropout is None:
        return {}
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    names = [name for name in ATTENTION_DROPOUT_NAMES if hasattr(config, name)]
    if not names:
        raise ValueError(
            f"attention_dropout: {path}'s config ({type(config).__name__}) has no "
            f"{' or '.join(ATTENTION_DROPOUT_NAMES)}, so its attention dropout cannot be set"
        )
    return {names[0]: attention_dropout}


def load_cross_encoder(
    name_or_path: str,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    attention_dropout: float | None = None,
) -> PreTrainedModel:
    """Load (or start, for a bare encoder) a one-logit sequence classifier from safetensors only;
    ``attention_dropout`` replaces the architecture's dropout on attention probabilities (None keeps it)."""
    path = resolve_model_path(name_or_path)
    return AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=1,
        dtype=dtype if dtype is not None else torch.float32,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
        **attention_dropout_override(path, attention_dropout, trust_remote_code),
    )


def score_pairs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One float32 relevance score per pair: the model's single logit."""
    inputs = {name: batch[name] for name in MODEL_INPUT_NAMES if name in batch}
    return model(**inputs).logits.view(-1).float()


def score_pairs_by_length(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], chunks: int, multiple: int = 8
) -> torch.Tensor:
    """`score_pairs` on ``chunks`` length-sorted slices of the batch, each cut to its own longest row.

    Why: a training batch (groups x group size pairs) is padded to its longest pair, and SQuAD-like passages
    vary a lot in length, so a third or more of the tokens the encoder runs on can be padding. Each pair's
    score is computed exactly as in one forward (an encoder's rows do not see each other; padding is masked),
    only with less padding; the scores come back in the batch's order and gradients flow through all slices.
    Right-padded batches only (cross-encoder collators pad on the right); others are scored in one forward.
    """
    mask = batch["attention_mask"]
    if chunks <= 1 or mask.shape[0] < 2 or not bool(mask[:, 0].all()):
        return score_pairs(model, batch)
    lengths = mask.sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    parts = []
    for rows in order.tensor_split(min(chunks, len(order))):
        width = int(lengths[rows].max())
        width = min(mask.shape[1], -(-width // multiple) * multiple)  # rounded up, as the collator pads
        parts.append(score_pairs(model, {k: batch[k][rows, :width] for k in MODEL_INPUT_NAMES if k in batch}))
    return torch.cat(parts)[torch.argsort(order)]


class CrossEncoderModel(RerankerModel):
    """The classifier's single logit is the score; its head is the transformers model's own classifier.

    ``forward_chunks`` > 1 scores training batches in length-sorted slices (`score_pairs_by_length`).
    """

    spec_class = CrossEncoderSpec

    def __init__(self, backbone: PreTrainedModel, spec: CrossEncoderSpec, forward_chunks: int = 1):
        super().__init__(backbone, spec)
        self.forward_chunks = forward_chunks

    @classmethod
    def input_names(cls) -> tuple[str, ...]:
        return MODEL_INPUT_NAMES

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[pairs]`` float32 logits."""
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        chunks = self.forward_chunks if self.training else 1
        return score_pairs_by_length(self.backbone, batch, chunks)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
        spec: RerankerSpec | None = None,
        **kwargs: Any,
    ) -> CrossEncoderModel:
        """Our checkpoints, or any one-logit sequence-classification folder (``spec`` then gives its budgets)."""
        path = resolve_model_path(str(name_or_path))
        spec = RerankerSpec.load(path) or spec
        if spec is None:
            raise ValueError(f"{name_or_path}: no rerankforge.json, and no stand-in spec was given")
        if not isinstance(spec, CrossEncoderSpec):
            raise ValueError(
                f"{name_or_path} holds a {spec.family!r} reranker; load it with that family's class"
            )
        backbone = load_cross_encoder(path, dtype=dtype, trust_remote_code=trust_remote_code)
        return cls(backbone, spec)

    @classmethod
    def load_tokenizer(cls, config: EncoderTrainingOptions) -> PreTrainedTokenizerBase:
        return AutoTokenizer.from_pretrained(
            resolve_model_path(config.tokenizer_name or config.model_name_or_path),
            trust_remote_code=config.trust_remote_code,
        )

    @classmethod
    def for_training(
        cls, config: EncoderTrainingOptions, tokenizer: PreTrainedTokenizerBase
    ) -> CrossEncoderModel:
        """The base model with a fresh one-logit head (or the trained one it has); the spec holds the scoring
        budgets, which may read longer passages than training does (``inference_passage_max_len``)."""
        backbone = load_cross_encoder(
            config.model_name_or_path,
            trust_remote_code=config.trust_remote_code,
            attention_dropout=config.attention_dropout,
        )
        scoring = PairLengths.for_model(
            config.query_max_len, config.scoring_passage_max_len, backbone.config, tokenizer
        )
        spec = CrossEncoderSpec(
            query_max_len=scoring.query_max_len,
            passage_max_len=scoring.passage_max_len,
            max_length=scoring.max_length,
            base_model=config.model_name_or_path,
        )
        return cls(backbone, spec, forward_chunks=config.forward_chunks)

    def training_lengths(
        self, config: EncoderTrainingOptions, tokenizer: PreTrainedTokenizerBase
    ) -> PairLengths:
        """Training's budgets: the config's, the pair within the model's positions."""
        return PairLengths.for_model(config.query_max_len, config.passage_max_len, self.config, tokenizer)

"""Cross-encoder settings: the base config with the defaults of BAAI/bge-reranker fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass, field

from rerankforge.trainer.config import RerankerConfig


@dataclass
class CrossEncoderConfig(RerankerConfig):
    """A sequence classifier with one logit, trained with grouped listwise cross-entropy."""

    family: str = field(default="cross_encoder", metadata={"help": "Reranker family (fixed: cross_encoder)."})
    passage_max_len: int = field(default=224, metadata={"help": "Tokens kept from each passage."})
    learning_rate: float = field(default=2e-5, metadata={"help": "AdamW learning rate."})

"""Cross-encoder settings: the base config with the defaults of BAAI/bge-reranker fine-tuning."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from rerankforge.inference.modeling.activation_checkpointing import checkpointing_kwargs, checkpointing_on
from rerankforge.trainer.config import RerankerConfig

logger = logging.getLogger(__name__)

CPU_LENGTH_SORTED_CHUNKS = 4


@dataclass
class CrossEncoderConfig(RerankerConfig):
    """A sequence classifier with one logit, trained with grouped listwise cross-entropy."""

    family: str = field(default="cross_encoder", metadata={"help": "Reranker family (fixed: cross_encoder)."})
    passage_max_len: int = field(default=224, metadata={"help": "Tokens kept from each passage in training."})
    inference_passage_max_len: int = field(
        default=0,
        metadata={
            "help": "Tokens kept from each passage when scoring: in the evaluation during training and in the "
            "saved model's rerankforge.json (0: passage_max_len). Training may cut passages short for speed "
            "while scoring reads them whole (the pair stays within the model's positions)."
        },
    )
    learning_rate: float = field(default=2e-5, metadata={"help": "AdamW learning rate."})
    attention_dropout: float | None = field(
        default=None,
        metadata={
            "help": "Dropout on attention probabilities during training (the encoder's config value when unset). "
            "0 keeps torch's attention on its fused kernel on the CPU: MiniLM steps 1.3-1.9x faster on a 2-core "
            "AVX2 EPYC (docs/performance.md); hidden-state dropout stays. The value is saved in the model's "
            "config, so a run that continues from the checkpoint keeps it unless it sets this again."
        },
    )
    length_sorted_chunks: int = field(
        default=0,
        metadata={
            "help": "Score each training batch in this many length-sorted slices, each padded only to its own "
            "longest pair: the same scores with less padding. 1 = one forward over the whole batch; 0 = auto: "
            f"{CPU_LENGTH_SORTED_CHUNKS} on the CPU (measured 1.6x faster steps, benchmarks/RESULTS.md), 1 elsewhere."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.inference_passage_max_len < 0:
            raise ValueError(
                f"inference_passage_max_len must be 0 (= passage_max_len) or more, got {self.inference_passage_max_len}"
            )
        if 0 < self.inference_passage_max_len < self.passage_max_len:
            logger.warning(
                "inference_passage_max_len=%d is shorter than passage_max_len=%d: the saved model will score "
                "less of each passage than it was trained on",
                self.inference_passage_max_len,
                self.passage_max_len,
            )
        if self.attention_dropout is not None and not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        if self.length_sorted_chunks < 0:
            raise ValueError(
                f"length_sorted_chunks must be 0 (auto) or more, got {self.length_sorted_chunks}"
            )

    @property
    def scoring_passage_max_len(self) -> int:
        """Passage tokens for evaluation and inference: the setting, or for 0 training's."""
        return self.inference_passage_max_len or self.passage_max_len

    @property
    def forward_chunks(self) -> int:
        """The slices per training batch: the setting, or for 0 the measured choice for this device."""
        if self.length_sorted_chunks:
            return self.length_sorted_chunks
        # measured on the CPU only; DeepSpeed ZeRO-3 would gather the weights again for every slice, and
        # reentrant checkpointing may not see one parameter's gradient arrive from several forwards
        reentrant = checkpointing_on(self) and checkpointing_kwargs(self).get("use_reentrant")
        if self.device.type != "cpu" or self.deepspeed or reentrant:
            return 1
        return CPU_LENGTH_SORTED_CHUNKS

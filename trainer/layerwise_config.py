"""Layerwise reranker settings: the LLM family's, plus which layers get heads, train, and self-distill."""

from __future__ import annotations

from dataclasses import dataclass, field

from rerankforge.trainer.llm_config import LLMRerankerConfig
from rerankforge.trainer.losses import LayerwiseObjective


@dataclass
class LayerwiseRerankerConfig(LLMRerankerConfig):
    """A decoder with a score head on each layer from ``start_layer`` to the last, started as the LM head's
    "Yes" row (``score: yes_minus_no``: "yes" minus "no", as the qwen3 and chat formats score)."""

    family: str = field(default="layerwise", metadata={"help": "Reranker family (fixed: layerwise)."})
    start_layer: int = field(default=8, metadata={"help": "First layer (1-based) with a score head."})
    train_layers: list[int] | None = field(
        default=None,
        metadata={"help": "Layers whose loss is summed (default: every layer with a head).", "nargs": "+"},
    )
    self_distill_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of every earlier layer learning the last layer's softmax (0: off)."},
    )

    def build_objective(self) -> LayerwiseObjective:
        """The ranking objective at every trained layer, summed, with self-distillation towards the last."""
        return LayerwiseObjective(
            super().build_objective(), self.self_distill_weight, self.distill_temperature
        )

    def uses_distill_temperature(self) -> bool:
        return super().uses_distill_temperature() or self.self_distill_weight > 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.start_layer < 1:
            raise ValueError(f"start_layer must be >= 1, got {self.start_layer}")
        if self.train_layers is not None and any(k < self.start_layer for k in self.train_layers):
            raise ValueError(
                f"train_layers {self.train_layers} must all be >= start_layer {self.start_layer}"
            )
        if self.self_distill_weight < 0:
            raise ValueError(f"self_distill_weight must be >= 0, got {self.self_distill_weight}")

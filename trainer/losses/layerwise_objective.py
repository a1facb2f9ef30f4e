"""The layerwise objective: the ranking objective at every trained layer, summed, plus optional
self-distillation in which every earlier layer also learns the last layer's (detached) softmax."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rerankforge.trainer.losses.kl import KLDivergenceLoss
from rerankforge.trainer.losses.objective import RankingObjective


class LayerwiseObjective(nn.Module):
    """``sum_k objective(scores_k) + self_distill_weight * sum_{k < last} KL(softmax(scores_last) || scores_k)``."""

    def __init__(
        self, objective: RankingObjective, self_distill_weight: float = 0.0, temperature: float = 1.0
    ):
        super().__init__()
        if self_distill_weight < 0:
            raise ValueError(f"self_distill_weight must be >= 0, got {self_distill_weight}")
        self.objective = objective
        self.self_distill_weight = self_distill_weight
        self.self_distillation = KLDivergenceLoss(temperature) if self_distill_weight > 0 else None

    @property
    def needs_teacher_scores(self) -> bool:
        return self.objective.needs_teacher_scores

    def forward(
        self, scores: dict[str, torch.Tensor], teacher_scores: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss over ``{layer name: [groups, group_size]}`` scores (shallowest first, the last one the
        self-distillation target), and its parts: each layer's share, by its name, and each term summed."""
        last = list(scores)[-1]
        parts: dict[str, torch.Tensor] = {}
        total = None
        for layer in scores:
            loss, terms = self.objective(scores[layer], teacher_scores)
            for name, value in terms.items():
                parts[name] = parts[name] + value if name in parts else value
            if self.self_distillation is not None and layer != last:
                self_distill = self.self_distillation(scores[layer], scores[last].detach())
                loss = loss + self.self_distill_weight * self_distill
                parts["self_distill"] = (
                    parts["self_distill"] + self_distill if "self_distill" in parts else self_distill
                )
            parts[layer] = loss
            total = loss if total is None else total + loss
        return total, parts

    def get_config_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "per_layer": self.objective.get_config_dict(),
            "summed_over": "trained layers",
        }
        if self.self_distillation is not None:
            config["self_distill_weight"] = self.self_distill_weight
            config["self_distillation"] = self.self_distillation.get_config_dict()
        return config

    def describe(self) -> str:
        text = f"{self.objective.describe()}, summed over every trained layer"
        if self.self_distillation is not None:
            text += f", with self-distillation towards the last layer (weight {self.self_distill_weight:g})"
        return text

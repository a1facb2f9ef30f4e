"""The training objective every family shares: grouped cross-entropy plus optional weighted distillation."""

from __future__ import annotations

import torch
from torch import nn

from rerankforge.trainer.losses.grouped_cross_entropy import GroupedCrossEntropyLoss
from rerankforge.trainer.losses.listwise_distillation import ListwiseDistillationLoss


class RankingObjective(nn.Module):
    """``CE(scores) + distill_weight * KL(teacher || scores)``; the second term only when distillation is on."""

    def __init__(self, distillation: bool = False, distill_weight: float = 1.0, temperature: float = 1.0):
        super().__init__()
        if distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {distill_weight}")
        self.cross_entropy = GroupedCrossEntropyLoss()
        self.distillation = ListwiseDistillationLoss(temperature) if distillation else None
        self.distill_weight = distill_weight

    def forward(self, scores: torch.Tensor, teacher_scores: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.cross_entropy(scores)
        if self.distillation is not None:
            if teacher_scores is None:
                raise ValueError("distillation is on but this batch carries no teacher scores")
            loss = loss + self.distill_weight * self.distillation(scores, teacher_scores)
        return loss

    def get_config_dict(self) -> dict[str, object]:
        config: dict[str, object] = {"cross_entropy": self.cross_entropy.get_config_dict()}
        if self.distillation is not None:
            config["distillation"] = self.distillation.get_config_dict()
            config["distill_weight"] = self.distill_weight
        return config

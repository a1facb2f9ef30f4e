"""The layerwise objective: the shared ranking objective at every trained layer, summed, plus optional
self-distillation in which every earlier layer also learns the last layer's (detached) softmax."""

from __future__ import annotations

import torch
from torch import nn

from rerankforge.trainer.losses.listwise_distillation import ListwiseDistillationLoss
from rerankforge.trainer.losses.ranking_objective import RankingObjective


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
        self.self_distillation = ListwiseDistillationLoss(temperature) if self_distill_weight > 0 else None

    def forward(
        self, scores: dict[int, torch.Tensor], teacher_scores: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The total loss and each layer's part of it (both over [groups, group_size] scores per layer)."""
        last = max(scores)
        parts: dict[int, torch.Tensor] = {}
        for layer in sorted(scores):
            loss = self.objective(scores[layer], teacher_scores)
            if self.self_distillation is not None and layer != last:
                target = scores[last].detach()
                loss = loss + self.self_distill_weight * self.self_distillation(scores[layer], target)
            parts[layer] = loss
        return torch.stack(list(parts.values())).sum(), parts

    def get_config_dict(self) -> dict[str, object]:
        config: dict[str, object] = {"per_layer": self.objective.get_config_dict()}
        if self.self_distillation is not None:
            config["self_distill_weight"] = self.self_distill_weight
            config["self_distillation"] = self.self_distillation.get_config_dict()
        return config

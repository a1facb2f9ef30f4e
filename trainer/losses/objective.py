"""The training objective: the chosen ranking loss, plus an optional weighted distillation term.

Both are chosen by registry name (``loss``, ``distill_loss``); the objective returns its total and its parts,
so the trainer can log each term next to ``loss``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rerankforge.trainer.losses.base import RankingLoss


class RankingObjective(nn.Module):
    """``loss(scores) + distill_weight * distill(scores, teacher)``; the second term only when one is chosen."""

    def __init__(self, loss: RankingLoss, distill: RankingLoss | None = None, distill_weight: float = 1.0):
        super().__init__()
        if not distill_weight >= 0:
            raise ValueError(f"distill_weight must be >= 0, got {distill_weight}")
        if distill is not None and distill.teacher != "required":
            raise ValueError(f"distill_loss {distill.name!r} does not learn from a teacher's scores")
        self.loss = loss
        self.distill = distill
        self.distill_weight = float(distill_weight)

    @property
    def needs_teacher_scores(self) -> bool:
        return self.loss.needs_teacher_scores or self.distill is not None

    def forward(
        self, scores: torch.Tensor, teacher_scores: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss and, when there is a distillation term, each term (unweighted) by name."""
        main = self.loss(scores, teacher_scores)
        if self.distill is None:
            return main, {}
        distill = self.distill(scores, teacher_scores)
        return main + self.distill_weight * distill, {"ranking": main, "distill": distill}

    def get_config_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {"loss": self.loss.get_config_dict()}
        if self.distill is not None:
            config["distill_loss"] = self.distill.get_config_dict()
            config["distill_weight"] = self.distill_weight
        return config

    def describe(self) -> str:
        text = self.loss.describe()
        if self.distill is not None:
            text += f", plus {self.distill_weight:g} x {self.distill.describe()}"
        return text

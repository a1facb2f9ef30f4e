"""MSE distillation: learn the teacher's scores themselves, pair by pair."""

from __future__ import annotations

import torch

from rerankforge.trainer.losses.base import RankingLoss


class MSELoss(RankingLoss):
    """Mean over every pair of ``(s - t)^2``: the student takes the teacher's scale and offset too."""

    name = "mse"
    summary = "MSE: squared error between the student's and the teacher's score of every pair"
    teacher = "required"

    def compute(self, scores: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
        return (scores - teacher).pow(2).mean()

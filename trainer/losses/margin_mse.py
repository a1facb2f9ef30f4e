"""MarginMSE (Hofstätter et al., 2020): learn the teacher's margin between the positive and each negative."""

from __future__ import annotations

import torch

from rerankforge.trainer.losses.base import RankingLoss


class MarginMSELoss(RankingLoss):
    """Mean over groups and negatives j of ``((s_0 - s_j) - (t_0 - t_j))^2``.

    Only differences are learnt, so the student's scores may sit on another scale offset than the teacher's.
    """

    name = "margin_mse"
    summary = (
        "MarginMSE: squared error between the student's and the teacher's positive-minus-negative margins"
    )
    teacher = "required"

    def compute(self, scores: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
        student_margins = scores[:, :1] - scores[:, 1:]
        teacher_margins = teacher[:, :1] - teacher[:, 1:]
        return (student_margins - teacher_margins).pow(2).mean()

"""Listwise distillation: KL(teacher || student) between the softmaxes over each group, at a temperature."""

from __future__ import annotations

import torch
from torch import nn

from rerankforge.trainer.losses.base import RankingLoss, check_positive


class KLDivergenceLoss(RankingLoss):
    """Mean over groups of KL(softmax(teacher / T) || softmax(scores / T)).

    No T^2 factor is applied: the distillation weight sets the balance with the ranking loss.
    """

    name = "kl"
    summary = "KL divergence from the teacher's softmax over each group to the student's"
    teacher = "required"

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        check_positive(self.name, temperature=temperature)
        self.temperature = float(temperature)

    def compute(self, scores: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
        student_log_probs = torch.log_softmax(scores / self.temperature, dim=-1)
        teacher_log_probs = torch.log_softmax(teacher / self.temperature, dim=-1)
        return nn.functional.kl_div(
            student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean"
        )

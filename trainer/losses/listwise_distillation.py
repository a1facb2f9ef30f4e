"""Listwise distillation: KL(teacher || student) between softmaxes over each group at a temperature."""

from __future__ import annotations

import torch
from torch import nn


class ListwiseDistillationLoss(nn.Module):
    """Mean over groups of KL(softmax(teacher / T) || softmax(student / T)).

    No T^2 factor is applied: the trainer's ``distill_weight`` sets the balance with the cross-entropy.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, scores: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
        if scores.shape != teacher_scores.shape:
            raise ValueError(
                f"student {tuple(scores.shape)} and teacher {tuple(teacher_scores.shape)} differ"
            )
        student_log_probs = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        teacher_log_probs = torch.log_softmax(teacher_scores.float() / self.temperature, dim=-1)
        return nn.functional.kl_div(
            student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean"
        )

    def get_config_dict(self) -> dict[str, object]:
        return {"name": "listwise_distillation", "temperature": self.temperature}

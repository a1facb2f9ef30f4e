"""Pointwise binary cross-entropy: each pair on its own, the positive labelled 1 and the negatives 0."""

from __future__ import annotations

import torch
from torch import nn

from rerankforge.trainer.losses.base import RankingLoss, binary_labels, check_positive


class BinaryCrossEntropyLoss(RankingLoss):
    """Mean over every pair of ``BCE(sigmoid(score), label)``, the positives' terms weighted by ``pos_weight``.

    With 1 positive and G-1 negatives per group, ``pos_weight = G-1`` gives both classes equal weight.
    """

    name = "bce"
    summary = "pointwise binary cross-entropy on each pair's logit (positive 1, negatives 0)"

    def __init__(self, pos_weight: float = 1.0) -> None:
        super().__init__()
        check_positive(self.name, pos_weight=pos_weight)
        self.pos_weight = float(pos_weight)

    def compute(self, scores: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
        weight = torch.tensor(self.pos_weight, device=scores.device)
        return nn.functional.binary_cross_entropy_with_logits(
            scores, binary_labels(scores), pos_weight=weight
        )

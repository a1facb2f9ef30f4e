"""RankNet (Burges et al., 2005): logistic loss on every pair that the labels order."""

from __future__ import annotations

import torch
from torch import nn

from rerankforge.trainer.losses.base import RankingLoss, check_positive, masked_mean, relevance


def ordered_pairs(labels: torch.Tensor) -> torch.Tensor:
    """``[groups, G, G]`` mask of the pairs (i, j) whose label i is greater than label j."""
    return labels[:, :, None] > labels[:, None, :]


class RankNetLoss(RankingLoss):
    """Mean over ordered pairs (label i > label j) of ``log(1 + exp(-sigma * (s_i - s_j)))``.

    Binary labels make these the (positive, negative) pairs of each group; with ``graded=True`` the teacher's
    scores order every pair of passages (ties form no pair).
    """

    name = "ranknet"
    summary = "RankNet: pairwise logistic loss on every (more relevant, less relevant) pair of a group"
    teacher = "graded"

    def __init__(self, sigma: float = 1.0, graded: bool = False) -> None:
        super().__init__()
        self.graded = bool(graded)
        check_positive(self.name, sigma=sigma)
        self.sigma = float(sigma)

    def compute(self, scores: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
        pairs = ordered_pairs(relevance(scores, teacher, self.graded)).float()
        differences = scores[:, :, None] - scores[:, None, :]
        losses = -nn.functional.logsigmoid(self.sigma * differences)
        return masked_mean(losses, pairs)

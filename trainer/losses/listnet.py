"""ListNet (Cao et al., 2007): cross-entropy between the labels' and the scores' top-one probabilities."""

from __future__ import annotations

import torch

from rerankforge.trainer.losses.base import RankingLoss, relevance


class ListNetLoss(RankingLoss):
    """Mean over groups of ``-sum_j softmax(labels)_j * log softmax(scores)_j``.

    The target is the softmax of the labels, as in the paper (and sentence-transformers): with binary labels
    and 4 passages the positive's share is e / (e + 3) = 0.48, not 1, so unlike grouped cross-entropy the loss
    stops pushing once the model's softmax matches that share. With ``graded=True`` the labels are the
    teacher's scores, and their scale sets how sharp the target is.
    """

    name = "listnet"
    summary = "ListNet: cross-entropy between softmax(labels) and softmax(scores) over each group"
    teacher = "graded"

    def __init__(self, graded: bool = False) -> None:
        super().__init__()
        self.graded = bool(graded)

    def compute(self, scores: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
        target = torch.softmax(relevance(scores, teacher, self.graded), dim=-1)
        return -(target * torch.log_softmax(scores, dim=-1)).sum(dim=-1).mean()

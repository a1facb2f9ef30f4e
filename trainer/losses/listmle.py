"""ListMLE (Xia et al., 2008): the Plackett-Luce likelihood of the labels' ordering of each group."""

from __future__ import annotations

import torch

from rerankforge.trainer.losses.base import RankingLoss


def plackett_luce_terms(scores: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``[groups, G]``: at each position i, ``logsumexp(s[order[i:]]) - s[order[i]]`` (the i-th choice's NLL)."""
    ranked = scores.gather(1, order)
    tail_logsumexp = torch.logcumsumexp(ranked.flip(1), dim=1).flip(1)
    return tail_logsumexp - ranked


def label_order(labels: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
    """Each group's passages by label, highest first; equal labels keep their order in the group.

    Binary labels (``labels`` None) give the group as it is: the positive, then the negatives as drawn.
    """
    if labels is None:
        return torch.arange(scores.size(1), device=scores.device).expand_as(scores)
    return torch.sort(labels, dim=1, descending=True, stable=True).indices


class ListMLELoss(RankingLoss):
    """Mean over groups of ``sum_i [logsumexp(s_pi(i..G)) - s_pi(i)]`` for the labels' ordering pi.

    With binary labels the negatives are tied, and the definition needs one ordering: they keep the order in
    which they were drawn (random, re-drawn each epoch), as sentence-transformers' ``respect_input_order``.
    So this loss is not invariant to the order of the negatives. With ``graded=True`` the teacher's scores
    give the ordering.
    """

    name = "listmle"
    summary = "ListMLE: negative Plackett-Luce log-likelihood of the labels' ordering of each group"
    teacher = "graded"
    order_invariant = False

    def __init__(self, graded: bool = False) -> None:
        super().__init__()
        self.graded = bool(graded)

    def position_weights(self, scores: torch.Tensor) -> torch.Tensor | None:
        """Weights of the G positions (None: all 1)."""
        return None

    def compute(self, scores: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
        terms = plackett_luce_terms(scores, label_order(teacher if self.graded else None, scores))
        weights = self.position_weights(scores)
        if weights is not None:
            terms = terms * weights
        return terms.sum(dim=1).mean()

"""LambdaLoss (Wang et al., 2018): pairwise logistic terms weighted by how much each pair moves NDCG."""

from __future__ import annotations

import math

import torch
from torch import nn

from rerankforge.trainer.losses.base import RankingLoss, binary_labels, check_positive, masked_mean
from rerankforge.trainer.losses.ranknet import ordered_pairs

WEIGHTINGS = ("ndcg_loss2pp", "ndcg_loss2", "lambdarank", "none")


def graded_gains_labels(teacher: torch.Tensor) -> torch.Tensor:
    """Teacher scores min-max scaled to [0, 1] within each group: graded labels whose gains 2^l - 1 stay in
    [0, 1] whatever the teacher's scale (a group whose teacher scores are all equal gets all zeros)."""
    low = teacher.min(dim=1, keepdim=True).values
    span = teacher.max(dim=1, keepdim=True).values - low
    return torch.where(span > 0, (teacher - low) / span.clamp(min=1e-12), torch.zeros_like(teacher))


class LambdaLoss(RankingLoss):
    """``-mean over pairs (i, j) of w_ij * log2 sigmoid(sigma * (s_i - s_j))`` over positions by predicted score.

    Passages are sorted by the model's scores (positions 1..G); a pair counts when label i > label j and both
    positions are within ``k``. With D(n) = log2(1 + n), gains G_i = (2^l_i - 1) / maxDCG@k and
    delta(n) = |1/D(n) - 1/D(n + 1)|, the weights are:

    - ``ndcg_loss2``: delta(|i - j|) * |G_i - G_j|
    - ``lambdarank``: |1/D(i) - 1/D(j)| * |G_i - G_j|
    - ``ndcg_loss2pp`` (NDCG-Loss2++, the default): mu * ndcg_loss2 + lambdarank
    - ``none``: 1 (RankNet in base 2)

    The weights depend on the current ranking and carry no gradient, as in the paper: when the positive
    overtakes a negative, the weights of its pairs change, so the loss can jump up at that point.
    ``graded=True`` takes the teacher's scores, scaled to [0, 1] within each group, as the labels.
    """

    name = "lambda_loss"
    summary = "LambdaLoss: pairwise logistic loss weighted by each pair's effect on NDCG"
    teacher = "graded"

    def __init__(
        self,
        weighting: str = "ndcg_loss2pp",
        k: int | None = None,
        sigma: float = 1.0,
        mu: float = 10.0,
        graded: bool = False,
    ) -> None:
        super().__init__()
        self.graded = bool(graded)
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"{self.name}: weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}"
            )
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"{self.name}: k must be a positive integer or null, got {k!r}")
        check_positive(self.name, sigma=sigma, mu=mu)
        self.weighting = weighting
        self.k = k
        self.sigma = float(sigma)
        self.mu = float(mu)

    def compute(self, scores: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
        size = scores.size(1)
        k = min(self.k or size, size)
        labels = graded_gains_labels(teacher) if self.graded else binary_labels(scores)
        ranked_scores, order = scores.sort(dim=1, descending=True, stable=True)
        ranked_labels = labels.gather(1, order)
        positions = torch.arange(1, size + 1, device=scores.device, dtype=scores.dtype)
        inverse_discount = 1.0 / torch.log2(1.0 + positions)  # 1/D(i)
        ideal = labels.sort(dim=1, descending=True).values
        max_dcg = ((torch.pow(2.0, ideal) - 1.0) * inverse_discount)[:, :k].sum(dim=1, keepdim=True)
        gains = (torch.pow(2.0, ranked_labels) - 1.0) / max_dcg.clamp(min=1e-10)
        weights = self.pair_weights(gains, inverse_discount, size)
        within_k = torch.zeros(size, size, dtype=torch.bool, device=scores.device)
        within_k[:k, :k] = True
        pairs = (ordered_pairs(ranked_labels) & within_k).float()
        differences = ranked_scores[:, :, None] - ranked_scores[:, None, :]
        log2_probabilities = nn.functional.logsigmoid(self.sigma * differences) / math.log(2.0)
        return masked_mean(-weights * log2_probabilities, pairs)

    def pair_weights(self, gains: torch.Tensor, inverse_discount: torch.Tensor, size: int) -> torch.Tensor:
        if self.weighting == "none":
            return torch.ones(1, size, size, device=gains.device, dtype=gains.dtype)
        gain_gaps = (gains[:, :, None] - gains[:, None, :]).abs()
        lambdarank = (inverse_discount[:, None] - inverse_discount[None, :]).abs()[None] * gain_gaps
        if self.weighting == "lambdarank":
            return lambdarank
        # delta(n) = 1/D(n) - 1/D(n + 1) for the pair's distance n = |i - j| (1..G-1); 0 on the diagonal
        index = torch.arange(size, device=gains.device)
        distance = (index[:, None] - index[None, :]).abs()
        delta = inverse_discount[(distance - 1).clamp(min=0)] - inverse_discount[distance]
        delta = delta.masked_fill(distance == 0, 0.0)
        ndcg_loss2 = delta[None] * gain_gaps
        if self.weighting == "ndcg_loss2":
            return ndcg_loss2
        return self.mu * ndcg_loss2 + lambdarank

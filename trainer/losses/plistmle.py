"""PListMLE, position-aware ListMLE (Lan et al., 2014): the top positions' choices weigh most."""

from __future__ import annotations

import torch

from rerankforge.trainer.losses.listmle import ListMLELoss


class PListMLELoss(ListMLELoss):
    """ListMLE with position i's term (0-based, of G) weighted by ``2^(G - i) - 1``, weights normalised to sum 1.

    The weights are sentence-transformers' default for ``PListMLELoss``: choosing the first passage matters most.
    """

    name = "plistmle"
    summary = "PListMLE: ListMLE with each position's term weighted by 2^(G - i) - 1 (normalised)"

    def position_weights(self, scores: torch.Tensor) -> torch.Tensor:
        size = scores.size(1)
        positions = torch.arange(size, device=scores.device, dtype=scores.dtype)
        weights = torch.pow(2.0, size - positions) - 1.0
        return weights / weights.sum()

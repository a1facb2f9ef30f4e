"""Grouped listwise cross-entropy (FlagEmbedding's and BGE's objective): the positive is the target class."""

from __future__ import annotations

import torch
from torch import nn

from rerankforge.trainer.losses.base import RankingLoss


class GroupedCrossEntropyLoss(RankingLoss):
    """Mean over groups of ``-log softmax(scores)[0]``: the group's passages compete, the positive should win."""

    name = "grouped_cross_entropy"
    summary = "grouped softmax cross-entropy: each group's positive is the target class among its passages"

    def compute(self, scores: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
        target = torch.zeros(scores.size(0), dtype=torch.long, device=scores.device)
        return nn.functional.cross_entropy(scores, target)

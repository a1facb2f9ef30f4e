"""Grouped listwise cross-entropy: within each group the positive (column 0) is the target class."""

from __future__ import annotations

import torch
from torch import nn


class GroupedCrossEntropyLoss(nn.Module):
    """Softmax over each group's scores, negative log-likelihood of the positive at column 0."""

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        if scores.dim() != 2:
            raise ValueError(f"expected scores of shape [groups, group_size], got {tuple(scores.shape)}")
        target = torch.zeros(scores.size(0), dtype=torch.long, device=scores.device)
        return nn.functional.cross_entropy(scores.float(), target)

    def get_config_dict(self) -> dict[str, object]:
        return {"name": "grouped_cross_entropy"}

"""The parts of a loss (its ranking and distillation terms, a layerwise model's layers), logged like ``loss``.

The Trainer logs ``loss`` as the mean over the steps since the last log, gathered from every process. The
parts are kept the same way: detached sums on the device (no host sync per step), averaged over the steps
since the last log and over processes only when a log is written.
"""

from __future__ import annotations

import torch
from transformers.trainer_pt_utils import nested_gather


class LossPartMeans:
    """Running sums of named loss parts between two logs."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        """One forward's parts (every training forward, micro-batches included, as ``loss`` counts them)."""
        if not parts:
            return
        for name, value in parts.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1

    def pop_means(self, parallel_mode) -> dict[str, float]:
        """``{"loss_<part>": mean}`` over forwards and processes since the last call; then start again.

        Every process must call this at the same log (the gather is collective), as the Trainer does for loss.
        """
        if not self.count:
            return {}
        names = sorted(self.sums)
        local = torch.stack([self.sums[name] for name in names]) / self.count
        gathered = nested_gather(local, parallel_mode).reshape(-1, len(names)).mean(dim=0)
        self.sums.clear()
        self.count = 0
        return {f"loss_{name}": value for name, value in zip(names, gathered.tolist(), strict=True)}

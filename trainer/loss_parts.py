"""The parts of a loss (its ranking and distillation terms, a layerwise model's layers), logged like ``loss``.

The Trainer logs ``loss`` as the mean over the optimizer steps since the last log of each step's loss (the mean
over its accumulated micro-batches), gathered from every process. The parts are kept the same way: detached sums
on the device (no host sync per step), each micro-batch's part divided by the step's accumulation count, then
divided by the steps since the last log and averaged over processes only when a log is written.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import TrainerCallback


class LossPartMeans(TrainerCallback):
    """Running sums of named loss parts between two logs (a callback: each ``train()`` starts them afresh)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.last_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.sums.clear()
        self.last_step = state.global_step  # a resumed run starts from its checkpoint's step

    def add(self, parts: dict[str, torch.Tensor], accumulation_steps: int = 1) -> None:
        """One training forward's parts; ``accumulation_steps``: micro-batches in its optimizer step."""
        for name, value in parts.items():
            value = value.detach().float() / accumulation_steps
            self.sums[name] = self.sums[name] + value if name in self.sums else value

    def pop_means(self, gather: Callable[[torch.Tensor], torch.Tensor], global_step: int) -> dict[str, float]:
        """``{"loss_<part>": mean}`` over the steps and processes since the last call; then start again.

        ``gather`` concatenates a tensor from every process (the Trainer's ``accelerator.gather``: public in every
        accelerate version, where transformers 5.0 has no ``trainer_pt_utils.nested_gather``). Every process must
        call this at the same log (the gather is collective), as the Trainer does for loss.
        """
        steps = global_step - self.last_step
        self.last_step = global_step
        if not self.sums or steps <= 0:
            self.sums.clear()
            return {}
        names = sorted(self.sums)
        local = torch.stack([self.sums[name] for name in names]) / steps
        gathered = gather(local).reshape(-1, len(names)).mean(dim=0)
        self.sums.clear()
        return {f"loss_{name}": value for name, value in zip(names, gathered.tolist(), strict=True)}

"""A run that goes non-finite stops loudly at that step (or skips it), and nothing is saved from the bad weights.

Without this, the Trainer's NaN filter logs a NaN loss as the running mean (often ``0``), the gradient norm as
``nan``, and the run "succeeds" with a model that scores every pair as NaN.

How it is checked, and what it costs:

- The loss of every micro-batch is read on the host right after its backward pass: the point where the
  Trainer's own NaN filter (``logging_nan_inf_filter``, on by default) already copies the same loss to the host,
  so the guard adds no wait of its own.
- ``nan_policy: stop``: the gradient norm (which the Trainer computes every step) is not read at once. A
  non-finite norm is recorded on the device and read with the next micro-batch's loss (one copy of two numbers
  instead of one), at the next log, before any checkpoint and before the final model is written. The update of
  that step has been applied, but the run stops before anything holding it is saved or marked complete.
- ``nan_policy: skip``: the norm is read on the host before the optimizer step (one scalar per step, as an fp16
  loss scaler does). A bad step's gradients are dropped (set to None, so the optimizer leaves every weight and
  its state alone); ``nan_max_consecutive_skips`` bad steps in a row stop the run.
- Under DDP the gradient norm is computed from the all-reduced gradients, so every process sees the same value
  and decides alike; a non-finite loss on one process alone stops that process, and torchrun stops the others.
  Under DeepSpeed the Trainer already reads the norm as a float (the engine's global norm); ``skip`` is refused
  there because the engine applies the update inside backward, before the norm is known.
- With an fp16 loss scaler, a non-finite gradient norm under a finite loss is the scaler's overflow step (it
  skips the update and lowers the scale): it counts as a skip under both policies, and only
  ``nan_max_consecutive_skips`` of them in a row (the scale collapsing) stop the run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)
NAN_POLICIES = ("stop", "skip")
# an fp16 scaler starts at 2**16 and halves on each overflow: a healthy run may overflow a few times in a row at
# the start, 24 in a row leave a scale below 2**-8 (collapsed)
SCALER_OVERFLOWS_IN_A_ROW = 24
SKIP_UNDER_DEEPSPEED = (
    "nan_policy skip cannot drop an update under DeepSpeed (its engine steps inside backward); use "
    "nan_policy stop, or DeepSpeed's own fp16 loss scaler, which skips overflowing steps"
)


class NonFiniteTrainingError(RuntimeError):
    """Training reached a non-finite loss or gradient norm; the message says where, why and how to go on."""


@dataclass
class RunFacts:
    """What the message reads to name likely causes and the checkpoint to resume from."""

    learning_rate: float
    max_grad_norm: float
    fp16: bool
    bf16: bool
    total_steps: Callable[[], int]
    newest_checkpoint: Callable[[], str | None]


def likely_causes(facts: RunFacts) -> list[str]:
    causes = []
    if facts.fp16:
        causes.append("fp16 overflow: train in bf16 (--bf16 true) or fp32, or lower the learning rate")
    if facts.learning_rate > 1e-3:
        causes.append(
            f"the learning rate {facts.learning_rate:g} is far above the usual 1e-5 to 2e-4 for fine-tuning"
        )
    else:
        causes.append(f"the learning rate ({facts.learning_rate:g}) may be too high for this model and data")
    if facts.max_grad_norm <= 0:
        causes.append("max_grad_norm is 0, so gradients are not clipped (the default is 1.0)")
    if facts.bf16:
        causes.append("bf16 keeps the range but not the precision: a model that overflows there needs fp32")
    return causes


def format_number(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g}"


class NanGuard:
    """Watches each micro-batch's loss and each step's gradient norm (see the module docstring)."""

    def __init__(
        self, policy: str, max_consecutive_skips: int, facts: RunFacts, uses_loss_scaler: bool = False
    ):
        if policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {', '.join(NAN_POLICIES)}, got {policy!r}")
        self.policy = policy
        self.max_consecutive_skips = max_consecutive_skips
        self.facts = facts
        self.uses_loss_scaler = uses_loss_scaler
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self._bad_loss_step: int | None = None  # skip mode: a non-finite loss was seen in this step
        self._last_loss: dict[int, float] = {}
        # stop mode: [step, grad norm] of the first step whose norm was non-finite, or step -1; on the device
        self._pending: torch.Tensor | None = None

    # --- the checks, called by the trainer ---

    def after_micro_batch(self, loss: torch.Tensor, step: int) -> None:
        """A micro-batch's loss (after its backward). Reads it, and any pending norm record, in one host copy."""
        if self._pending is not None:
            values = torch.cat([loss.detach().float().reshape(1), self._pending.to(loss.device)]).tolist()
            loss_value, pending_step, pending_norm = values
            if pending_step >= 0:
                self._stop(int(pending_step), self._last_loss.get(int(pending_step)), pending_norm)
        else:
            loss_value = loss.detach().float().item()
        if step in self._last_loss and not math.isfinite(self._last_loss[step]):
            loss_value = self._last_loss[step]  # the step's first non-finite micro-batch is the one to report
        self._last_loss = {step: loss_value}
        if math.isfinite(loss_value):
            return
        if self.policy == "stop":
            self._stop(step, loss_value, None)
        self._bad_loss_step = step

    def after_gradients(
        self,
        grad_norm: torch.Tensor | float | None,
        step: int,
        drop_gradients: Callable[[], None],
        any_process: Callable[[bool], bool] = lambda flag: flag,
    ) -> None:
        """The step's gradient norm, before the optimizer step. ``drop_gradients`` makes that step a no-op;
        ``any_process`` turns this process's flag into "true on any process" (a collective under DDP)."""
        if grad_norm is None:
            return
        read_now = self.policy == "skip" or self.uses_loss_scaler or not isinstance(grad_norm, torch.Tensor)
        if not read_now:
            norm = grad_norm.detach().float().reshape(1)
            bad = ~torch.isfinite(norm)
            record = torch.cat([norm.new_full((1,), float(step)), norm])  # a fill kernel: no host copy
            if self._pending is None:
                self._pending = norm.new_full((2,), -1.0)
            self._pending = torch.where(bad & (self._pending[0] < 0), record, self._pending)
            return
        norm_value = float(grad_norm)
        # under stop a non-finite loss has raised already; under skip every process must decide alike
        bad_loss = any_process(self._bad_loss_step == step) if self.policy == "skip" else False
        self._bad_loss_step = None
        if math.isfinite(norm_value) and not bad_loss:
            self.consecutive_skips = 0
            return
        scaler_overflow = self.uses_loss_scaler and not bad_loss
        if self.policy == "stop" and not scaler_overflow:
            self._stop(step, self._last_loss.get(step), norm_value)
        if not scaler_overflow:
            drop_gradients()
        self.skipped_steps += 1
        self.consecutive_skips += 1
        logger.warning(
            "step %d: %s (loss %s, gradient norm %s): update skipped (%d in a row, %d in all)",
            step,
            "fp16 overflow" if scaler_overflow else "non-finite",
            format_number(self._last_loss.get(step)),
            format_number(norm_value),
            self.consecutive_skips,
            self.skipped_steps,
        )
        limit = (
            max(self.max_consecutive_skips, SCALER_OVERFLOWS_IN_A_ROW)
            if scaler_overflow
            else self.max_consecutive_skips
        )
        if self.consecutive_skips >= limit:
            self._stop(step, self._last_loss.get(step), norm_value, in_a_row=self.consecutive_skips)

    def check_weights(self, parameters: list[torch.Tensor], step: int) -> None:
        """Before a checkpoint or the final model: every weight is finite (an update can overflow the weights
        while the loss and gradient norm were still finite). One norm per tensor, one host copy."""
        tensors = [p.detach() for p in parameters if p.numel()]
        if not tensors:
            return
        norms = torch._foreach_norm(tensors)
        if bool(torch.isfinite(torch.stack([n.float().to(norms[0].device) for n in norms])).all()):
            return
        self._stop(step, self._last_loss.get(step), None, weights=True)

    def raise_if_pending(self) -> None:
        """Read the device record (stop mode); called where the Trainer syncs anyway: logs, saves, the end."""
        if self._pending is None:
            return
        pending_step, pending_norm = self._pending.tolist()
        if pending_step >= 0:
            self._stop(int(pending_step), self._last_loss.get(int(pending_step)), pending_norm)

    # --- the message ---

    def _stop(
        self, step: int, loss: float | None, grad_norm: float | None, in_a_row: int = 0, weights: bool = False
    ) -> None:
        what = (
            f"{in_a_row} steps in a row had a non-finite loss or gradient norm (nan_max_consecutive_skips "
            f"{self.max_consecutive_skips}); the last, step {step}, had"
            if in_a_row
            else f"step {step} has"
        )
        norm = "not yet computed" if grad_norm is None else format_number(grad_norm)
        first = (
            f"training stopped: after step {step} some weights are NaN or infinite (the last loss was "
            f"{format_number(loss)})"
            if weights
            else f"training stopped: {what} loss {format_number(loss)} and gradient norm {norm}"
        )
        lines = [
            f"{first} (of {self.facts.total_steps()} steps)",
            "likely causes:",
            *(f"  - {cause}" for cause in likely_causes(self.facts)),
        ]
        checkpoint = self.facts.newest_checkpoint()
        if checkpoint:
            lines.append(
                f"the newest complete checkpoint is {checkpoint} (from before the bad step): fix the cause, then "
                "rerun with --resume_from_checkpoint auto"
            )
        else:
            lines.append("there is no complete checkpoint to resume from: fix the cause and start again")
        lines.append(
            "nothing was saved from the non-finite weights (no final model, no checkpoint marked complete)"
        )
        if self.policy == "stop":
            lines.append("nan_policy skip drops such steps instead, if they are rare")
        raise NonFiniteTrainingError("\n".join(lines))

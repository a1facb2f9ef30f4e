"""SIGTERM (what spot instances and Slurm send before they take the machine) ends training with a checkpoint.

The first SIGTERM only sets a flag: the run finishes the optimizer step it is in, writes a complete checkpoint
(marked as every checkpoint is), and exits with code 143, the exit status of a process ended by SIGTERM, so a
scheduler sees "preempted". ``--resume_from_checkpoint auto`` then continues to the same end as an uninterrupted
run. A second SIGTERM, or SIGINT after a SIGTERM, ends the process at once: the checkpoint being written then
has no completion marker, and the newest complete one is untouched (older ones are rotated away only after a
newer one is marked). A lone SIGINT (Ctrl-C) behaves as Python's default, a KeyboardInterrupt.

Under DDP (torchrun forwards the signal to every process, each at its own point in its step) the flag is
reduced across processes at every step end (one one-element collective), so all processes stop after the same
step and save one checkpoint together.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)
EXIT_PREEMPTED = 128 + signal.SIGTERM


class TrainingPreempted(RuntimeError):
    """The run stopped on SIGTERM after writing a checkpoint; the message says how to continue."""


class PreemptionCallback(TrainerCallback):
    """Turns the first SIGTERM into "save at the end of this step, then stop"."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.requested = False
        self.stopped_at_step: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            logger.warning("training runs outside the main thread: SIGTERM will not save a checkpoint")
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def on_train_end(self, args, state, control, **kwargs):
        self.restore_handlers()

    def restore_handlers(self) -> None:
        """The handlers from before training (also when training raised: the trainer calls this in finally)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.requested:  # the second signal: end now, as the default action would
            logger.warning("%s again: stopping at once", signal.Signals(signum).name)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if signum == signal.SIGINT:
            previous = self._previous.get(signal.SIGINT)
            if callable(previous):
                previous(signum, frame)  # Python's own: KeyboardInterrupt
            return
        self.requested = True
        logger.warning(
            "SIGTERM: finishing this step, saving a checkpoint, then exiting (send it again to stop at once)"
        )

    def on_step_end(self, args, state, control, **kwargs):
        if not self._requested_anywhere():
            return
        control.should_save = True
        control.should_training_stop = True
        self.stopped_at_step = state.global_step

    def _requested_anywhere(self) -> bool:
        accelerator = self.trainer.accelerator
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=self.trainer.args.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)

    def preempted_error(self, checkpoint: str | None) -> TrainingPreempted:
        where = (
            f"a complete checkpoint is in {checkpoint}" if checkpoint else "no checkpoint could be written"
        )
        return TrainingPreempted(
            f"stopped by SIGTERM after step {self.stopped_at_step}: {where}; run the same command with "
            "--resume_from_checkpoint auto to continue where it stopped"
        )

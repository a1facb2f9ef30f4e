"""SIGTERM (what spot instances and Slurm send before they take the machine) ends training with a checkpoint.

The first SIGTERM only sets a flag: the run finishes the optimizer step it is in, writes a complete checkpoint
(marked as every checkpoint is), and exits with code 143, the exit status of a process ended by SIGTERM, so a
scheduler sees "preempted". ``--resume_from_checkpoint auto`` then continues to the same end as an uninterrupted
run. A second SIGTERM (more than a second after the first: Slurm signals every process of a job and torchrun
forwards the signal to its workers again, so one request can arrive twice), or SIGINT after a SIGTERM, ends the
process at once: the checkpoint being written then has no completion marker, and the newest complete one is
untouched (older ones are rotated away only after a newer one is marked). A lone SIGINT (Ctrl-C) behaves as
Python's default, a KeyboardInterrupt.

Under DDP (each process receives the signal at its own point in its step) the flag is summed across processes
at every step end (one one-element all-reduce per step, the cost of this feature), so all processes stop after
the same step and save one checkpoint together.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)
EXIT_PREEMPTED = 128 + signal.SIGTERM
REPEAT_WINDOW_S = 1.0  # a SIGTERM this soon after the first is the same request, delivered twice


class TrainingPreempted(RuntimeError):
    """The run stopped on SIGTERM after writing a checkpoint; the message says how to continue."""


class PreemptionCallback(TrainerCallback):
    """Turns the first SIGTERM into "save at the end of this step, then stop"."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.requested_at: float | None = None  # time.monotonic() of the first SIGTERM
        self.announced = False
        self.stopped_at_step: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def on_train_begin(self, args, state, control, **kwargs):
        self.requested_at, self.announced, self.stopped_at_step = None, False, None
        control.should_training_stop = False  # a checkpoint's restored control state may carry ours
        if self._previous:  # installed already (auto_find_batch_size runs the loop again)
            return
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
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        """Only sets state or ends the process: no logging here (a write to a stream the interrupted code was
        writing to raises "reentrant call")."""
        now = time.monotonic()
        if signum == signal.SIGTERM and (
            self.requested_at is None or now - self.requested_at < REPEAT_WINDOW_S
        ):
            # the first SIGTERM, or the same one delivered twice (Slurm signals every process and torchrun
            # forwards it again to its workers)
            self.requested_at = self.requested_at if self.requested_at is not None else now
            return
        if signum == signal.SIGINT and not self.requested:
            previous = self._previous.get(signal.SIGINT)
            if callable(previous):
                previous(signum, frame)  # Python's own: KeyboardInterrupt
                return
            if previous == signal.SIG_IGN:
                return
        signal.signal(signum, signal.SIG_DFL)  # a second signal: end now, as the default action would
        os.kill(os.getpid(), signum)

    def on_step_end(self, args, state, control, **kwargs):
        if not self.trainer.true_on_any_process(self.requested):
            return
        if not self.announced:
            logger.warning(
                "SIGTERM: saving a checkpoint after step %d, then exiting (send it again to stop at once)",
                state.global_step,
            )
            self.announced = True
        control.should_save = True
        control.should_evaluate = (
            False  # the grace period is for the checkpoint (and save_strategy best reads it)
        )
        control.should_training_stop = True
        self.stopped_at_step = state.global_step

    def on_epoch_end(self, args, state, control, **kwargs):
        """After a preemption stop, the epoch's end must not evaluate or rewrite the checkpoint just written."""
        if self.stopped_at_step is not None:
            control.should_save = False
            control.should_evaluate = False

    def preempted_error(self, checkpoint: str | None) -> TrainingPreempted:
        where = (
            f"a complete checkpoint is in {checkpoint}" if checkpoint else "no checkpoint could be written"
        )
        return TrainingPreempted(
            f"stopped by SIGTERM after step {self.stopped_at_step}: {where}; run the same command with "
            "--resume_from_checkpoint auto to continue where it stopped"
        )

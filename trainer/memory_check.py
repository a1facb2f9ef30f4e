"""Before the first step: will one training step fit in memory? Measured on a probe, not guessed.

`check_step_memory` builds the longest batch the collator can produce (every row padded to the training lengths,
the longest prompt of the data), runs a real forward and backward through the Trainer's model and objective on
2 and 4 such rows (gradient checkpointing and mixed precision as configured; more rows when the two probes ran
different ops), records the live memory after every allocation, and scales that timeline linearly to the step's
``per_device_train_batch_size x train_group_size`` rows, whose largest point is the activations' peak. Weights,
gradients, optimizer state (and DDP's gradient buckets) are counted from the parameters. What the step adds to
the loaded weights, times the processes sharing the device, is compared with what the device has free: host RAM
on CPU (shared by every process of the run on this machine), GPU memory on CUDA.

The probe leaves no trace: random states, train/eval modes, gradients, checkpointing flags and hooks are restored,
so a run gives the same losses with the check on or off.

Measurement: live tensor bytes, and what the process really holds. On CUDA: the allocator's peak allocated and
reserved bytes. On CPU: the bytes of live tensor storages, counted op by op (a `TorchDispatchMode`), and the
process's peak RSS (VmHWM after ``clear_refs``, the heap trimmed first so freed memory cannot hide an allocation).
glibc's malloc keeps freed activation blocks in its heap (its mmap threshold rises to 32 MiB as big blocks are
freed), so a CPU step holds more than its live tensors: measured on SmolLM2-135M, peak RSS 1.4x the live tensors
without gradient checkpointing, 6.5x with it. The probes run with the threshold already where a run settles, and
the ratio they measure scales the live-tensor fit. ``MALLOC_MMAP_THRESHOLD_=131072`` returns freed blocks to the
OS instead (ratio 1.0, but steps 1.4-1.7x slower on a 2-core CPU); the advice says so when it would help.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import random
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy
import psutil
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from rerankforge.data_tools.grouping import TrainGroup
from rerankforge.inference.modeling.activation_checkpointing import (
    checkpointing_kwargs,
    checkpointing_on,
    enable_checkpointing,
    flag_name,
)

if TYPE_CHECKING:
    from rerankforge.trainer.base_trainer import RerankerTrainer

logger = logging.getLogger(__name__)

GIB = 2**30
HEADROOM_FRACTION = 0.10  # of the free memory, kept for the data loader, Python objects, allocator slack
MIN_HEADROOM = 256 * 2**20
PROBE_ROWS = (2, 4)  # rows of the first two probes (groups of 2 passages): cheap next to a step
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's dynamic mmap threshold stops rising here (64-bit)
_PROBE_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]


class MemoryEstimateError(RuntimeError):
    """One training step will not fit in the memory this device has free (or it just ran out)."""

    def __init__(self, message: str, estimate: MemoryEstimate | None = None):
        super().__init__(message)
        self.estimate = estimate


@dataclass(frozen=True, eq=False)
class ActivationFit:
    """Activation memory of a micro-batch, from two probes of ``probe_rows`` rows.

    ``live`` holds each probe's live tensor bytes after every allocation and release, in order (the same ops run
    in the same order whatever the rows). Each point of the timeline is scaled linearly in the rows and the
    largest is the peak: the moment that peaks can change with the batch (late in backward, under a large
    parameter's gradient, for a few rows; at the start of backward, under the activations, for many), which a fit
    of the two peaks alone would miss. Where the timelines differ, or only peaks are known, the peaks are fitted.
    ``overhead``: what the process held per live byte on the same probes (glibc's retained heap on CPU, the
    caching allocator's reserve on CUDA), at least 1.
    """

    probe_rows: tuple[int, int]
    live: tuple[torch.Tensor, torch.Tensor]
    overhead: float = 1.0

    @classmethod
    def from_probes(
        cls, rows: tuple[int, int], peaks: tuple[int, int], held: tuple[int, int] | None = None
    ) -> ActivationFit:
        """From the probes' peaks alone; ``held``: the process's peak growth on each, when known."""
        return cls.from_timelines(rows, tuple(torch.tensor([p], dtype=torch.float64) for p in peaks), held)

    @classmethod
    def from_timelines(
        cls,
        rows: tuple[int, int],
        live: tuple[torch.Tensor, torch.Tensor],
        held: tuple[int, int] | None = None,
    ) -> ActivationFit:
        peaks = [float(t.max()) if t.numel() else 0.0 for t in live]
        overhead = max(sum(held) / sum(peaks), 1.0) if held and sum(peaks) > 0 else 1.0
        return cls(tuple(rows), tuple(t.to(torch.float64) for t in live), overhead)

    @property
    def probe_peaks(self) -> tuple[int, int]:
        return tuple(int(t.max()) if t.numel() else 0 for t in self.live)

    def tensors_at(self, rows: int) -> int:
        """Live tensor bytes at their peak for ``rows`` rows."""
        (r1, r2), (a, b) = self.probe_rows, self.live
        if a.shape != b.shape:  # the probes ran different ops: fit their peaks
            a, b = a.max().reshape(1), b.max().reshape(1)
        scale = (rows - r1) / (r2 - r1)
        timeline = a + (b - a).clamp(min=0) * scale  # memory never shrinks with more rows
        return int(max(float(timeline.max()), float(b.max()) if rows >= r2 else 0.0))

    def at(self, rows: int) -> int:
        """What the process holds for them at ``rows``."""
        return int(self.tensors_at(rows) * self.overhead)


@dataclass(frozen=True)
class MemoryEstimate:
    """One training step's peak memory per process, in bytes, against what the device has free."""

    device: str  # "cpu" or "cuda:0"
    processes: int  # processes of this run sharing the device's memory
    weights: int  # parameters and buffers (tied weights once); already loaded when the check runs
    parameters: int
    weight_dtype: str
    trainable: int  # trainable parameters
    gradients: int
    optimizer_state: int
    optimizer: str
    gradient_buckets: int  # DDP's flat copy of the gradients (0 without DDP)
    activations: ActivationFit
    queries: int  # per_device_train_batch_size
    group_size: int  # train_group_size
    accumulation: int  # gradient_accumulation_steps
    tokens: int  # the longest row, padded
    checkpointing: bool
    free: int  # memory free for this run on the device (all its processes) when the check started
    free_source: str
    alternatives: tuple[str, ...] = field(default=())
    measured_in_s: float = 0.0

    @property
    def rows(self) -> int:
        return self.queries * self.group_size

    @property
    def activation_bytes(self) -> int:
        return self.activations.at(self.rows)

    @property
    def per_process(self) -> int:
        """The estimated peak of one process during a step."""
        return self.weights + self.beyond_loaded

    @property
    def beyond_loaded(self) -> int:
        """What a process still has to allocate: everything but the weights it already holds."""
        return self.gradients + self.optimizer_state + self.gradient_buckets + self.activation_bytes

    @property
    def needed(self) -> int:
        """What the run's processes on this device will still allocate together."""
        return self.beyond_loaded * self.processes

    @property
    def usable(self) -> int:
        return max(self.free - max(int(self.free * HEADROOM_FRACTION), MIN_HEADROOM), 0)

    @property
    def fits(self) -> bool:
        return self.needed <= self.usable

    def needed_for(self, queries: int, checkpointing_fit: ActivationFit | None = None) -> int:
        """Bytes the run's processes would still allocate with ``queries`` per micro-batch (and another fit)."""
        fit = checkpointing_fit or self.activations
        fixed = self.gradients + self.optimizer_state + self.gradient_buckets
        return (fixed + fit.at(queries * self.group_size)) * self.processes

    def summary(self) -> str:
        """One line for the log."""
        return (
            f"one training step needs ~{gib(self.per_process)} per process on {self.device} "
            f"({self.queries} x {self.group_size} rows of {self.tokens} tokens, activations "
            f"{gib(self.activation_bytes)}); {gib(self.needed)} more for {_processes(self.processes)}, "
            f"{gib(self.usable)} usable of {gib(self.free)} {self.free_source} (measured in {self.measured_in_s:.0f} s)"
        )

    def breakdown(self) -> str:
        """The estimate, part by part, per process."""
        fit = self.activations
        probes = " and ".join(f"{r} rows" for r in fit.probe_rows)
        lines = [
            f"Estimated peak of one training step, per process ({self.device}, {_processes(self.processes)} "
            "sharing its memory):",
            f"  weights          {gib(self.weights):>10}  {self.parameters / 1e6:,.1f}M parameters, "
            f"{self.weight_dtype} (already loaded)",
            f"  gradients        {gib(self.gradients):>10}  {self.trainable / 1e6:,.2f}M trainable parameters",
            f"  optimizer state  {gib(self.optimizer_state):>10}  {self.optimizer}",
        ]
        if self.gradient_buckets:
            lines.append(f"  DDP buckets      {gib(self.gradient_buckets):>10}  a flat copy of the gradients")
        overhead = (
            f": live tensors {gib(fit.tensors_at(self.rows))} x {fit.overhead:.2f} held by the allocator"
            if fit.overhead > 1.005
            else ""
        )
        lines += [
            f"  activations      {gib(self.activation_bytes):>10}  measured on probes of {probes} of "
            f"{self.tokens} tokens, scaled to {self.rows} rows ({self.queries} queries x {self.group_size} "
            f"passages), gradient checkpointing {'on' if self.checkpointing else 'off'}{overhead}",
            f"  total            {gib(self.per_process):>10}  per process; {gib(self.beyond_loaded)} beyond "
            f"the loaded weights, x {self.processes} = {gib(self.needed)}",
            f"Free: {gib(self.free)} {self.free_source}; {gib(self.usable)} usable after "
            f"{HEADROOM_FRACTION:.0%} headroom.",
        ]
        return "\n".join(lines)

    def message(self) -> str:
        """Why the run stops, the estimate, and what to change."""
        head = (
            f"One training step will not fit in memory: {_processes(self.processes)} on {self.device} would need "
            f"~{gib(self.needed)} more and {gib(self.usable)} is usable. Stopped before the first step."
        )
        advice = "\n".join(f"  {a}" for a in self.alternatives)
        return f"{head}\n{self.breakdown()}\nWhat fits instead:\n{advice}"


def gib(n: float) -> str:
    """Bytes as GiB (MiB below one GiB)."""
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / 2**20:.0f} MiB"


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


# ---- the check -------------------------------------------------------------------------------------------


def check_step_memory(trainer: RerankerTrainer) -> MemoryEstimate | None:
    """Measure one step's peak memory per process and stop (`MemoryEstimateError`) when it will not fit.

    Call it on every process, after the trainer is built and before ``trainer.train()``: the processes meet
    twice (before reading free memory, and to agree on the verdict). Returns the estimate (also kept as
    ``trainer.memory_estimate``), or None when the check is off or does not apply (DeepSpeed, FSDP, model
    parallel, devices other than CPU and CUDA).
    """
    args = trainer.args
    if not getattr(args, "memory_check", True):
        return None
    reason = _not_applicable(trainer)
    if reason is not None:
        logger.info("memory check skipped: %s", reason)
        return None
    device = args.device
    started = time.monotonic()
    _all_processes_max(trainer, 0.0)  # every process has loaded its model before free memory is read
    free, source = free_memory(device, getattr(args, "memory_limit_gb", None))
    probe = StepProbe(trainer)
    estimate = probe.estimate(free, source)
    over = _all_processes_max(trainer, 0.0 if estimate.fits else 1.0) > 0
    if over:
        estimate = replace(estimate, alternatives=tuple(probe.alternatives(estimate)))
    estimate = replace(estimate, measured_in_s=time.monotonic() - started)
    trainer.memory_estimate = estimate
    if not over:
        if trainer.is_local_process_zero():
            logger.info("memory check: %s", estimate.summary())
        return estimate
    if estimate.fits:  # another process (another host) is short of memory; its message says how much
        message = (
            f"Another process of this run will not fit in memory; here: {estimate.summary()}. "
            "Stopped before the first step."
        )
        raise MemoryEstimateError(message, estimate)
    if args.auto_find_batch_size and device.type == "cuda":
        logger.warning(
            "%s\n(auto_find_batch_size is on: the Trainer will retry smaller batches)", estimate.message()
        )
        return estimate
    raise MemoryEstimateError(estimate.message(), estimate)


def _not_applicable(trainer: RerankerTrainer) -> str | None:
    args = trainer.args
    if args.deepspeed or getattr(trainer, "is_deepspeed_enabled", False):
        return "DeepSpeed shards and offloads memory in ways this estimate does not model"
    if getattr(trainer, "is_fsdp_enabled", False) or args.fsdp:
        return "FSDP shards memory in ways this estimate does not model"
    if getattr(trainer, "is_model_parallel", False):
        return "the model is split over several devices"
    if args.device.type not in ("cpu", "cuda"):
        return f"device {args.device.type} (the check measures CPU and CUDA)"
    return None


def _all_processes_max(trainer: RerankerTrainer, value: float) -> float:
    """The largest ``value`` over the run's processes (also a barrier); ``value`` alone without DDP."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    if torch.distributed.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=trainer.args.device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return float(tensor.item())


def processes_sharing(device: torch.device, world_size: int) -> int:
    """Processes of this run whose memory comes from the same place: this host's RAM, or this GPU."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or 0) or max(world_size, 1)
    if device.type == "cuda":
        return max(math.ceil(local / max(torch.cuda.device_count(), 1)), 1)
    return local


# ---- free memory -----------------------------------------------------------------------------------------


def free_memory(device: torch.device, limit_gb: float | None = None) -> tuple[int, str]:
    """Bytes this run may still allocate on ``device`` (all its processes there together), and where that
    number comes from: ``limit_gb`` when given, else free GPU memory, else available host RAM (the lower of
    the machine's and its memory cgroup's)."""
    if limit_gb is not None:
        return int(limit_gb * GIB), "allowed by memory_limit_gb"
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), "free GPU memory"

    available = int(psutil.virtual_memory().available)
    cgroup = cgroup_available()
    if cgroup is not None and cgroup < available:
        return cgroup, "available in this container's memory limit"
    return available, "available host RAM"


def cgroup_available(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Room left under this process's memory cgroup limit (v2 or v1), counting reclaimable file cache as free;
    None when there is no limit."""
    candidates = [
        (root / "memory.max", root / "memory.current", "inactive_file"),  # v2
        (
            root / "memory" / "memory.limit_in_bytes",
            root / "memory" / "memory.usage_in_bytes",
            "total_inactive_file",
        ),
    ]
    for limit_file, usage_file, cache_key in candidates:
        try:
            limit_text = limit_file.read_text().strip()
            usage = int(usage_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or int(limit_text) >= 2**60:
            return None
        cache = 0
        with contextlib.suppress(OSError, ValueError):
            for line in (limit_file.parent / "memory.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == cache_key:
                    cache = int(value)
        return max(int(limit_text) - usage + cache, 0)
    return None


def _malloc_trim() -> None:
    """glibc: give the heap's free pages back to the OS, so a measurement cannot reuse them unseen."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _settle_malloc_threshold() -> None:
    """glibc raises its mmap threshold to the size of each bigger mmapped block freed, up to 32 MiB; a run
    reaches that within its first steps. Freeing one such block first puts the probes where a run settles."""
    block = torch.empty(MMAP_THRESHOLD_MAX - 2**20, dtype=torch.uint8)
    del block


class ProcessPeak:
    """This process's peak resident memory above the start of the block (Linux: VmHWM after clear_refs)."""

    def __init__(self) -> None:
        self.peak: int | None = None
        self._start = 0

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))

    def __enter__(self) -> ProcessPeak:
        _malloc_trim()
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets VmHWM to the current RSS
            self._start = self._status("VmRSS")
        except (OSError, StopIteration):
            self._start = -1
        return self

    def __exit__(self, *exc: object) -> None:
        if self._start >= 0:
            with contextlib.suppress(OSError, StopIteration):
                self.peak = max(self._status("VmHWM") - self._start, 0)


# ---- the probe -------------------------------------------------------------------------------------------


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of tensor storages created inside the mode and still alive, and their peak (one device type).

    Storages marked as parameter gradients (`mark_gradient`) can be left out afterwards (`timeline_without_gradients`).
    """

    def __init__(self, device_type: str = "cpu"):
        super().__init__()
        self.device_type = device_type
        self.live = 0
        self.peak = 0
        self._alive: dict[int, tuple[int, weakref.ref]] = {}  # data_ptr -> (allocation number, ref)
        self._events: list[tuple[int, int]] = []  # (allocation number, +bytes or -bytes), in order
        self._gradients: set[int] = set()

    def _released(self, key: int, number: int, nbytes: int, _ref: weakref.ref) -> None:
        if self._alive.get(key, (None,))[0] == number:
            del self._alive[key]
        self.live -= nbytes
        self._events.append((number, -nbytes))

    def mark_gradient(self, tensor: torch.Tensor) -> None:
        """``tensor``'s storage (allocated inside the mode) is a parameter's gradient."""
        found = self._alive.get(tensor.untyped_storage().data_ptr())
        if found is not None:
            self._gradients.add(found[0])

    def timeline_without_gradients(self) -> torch.Tensor:
        """Live bytes after each allocation and release, the marked gradients left out."""
        deltas = [delta for number, delta in self._events if number not in self._gradients]
        return (
            torch.tensor(deltas, dtype=torch.float64).cumsum(0)
            if deltas
            else torch.zeros(1, dtype=torch.float64)
        )

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = None
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.device.type != self.device_type:
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._alive:
                continue
            if inputs is None:  # views and in-place results share an input's storage: not new memory
                inputs = {
                    t.untyped_storage().data_ptr()
                    for t in tree_leaves((args, kwargs))
                    if isinstance(t, torch.Tensor) and t.device.type == self.device_type
                }
            if key in inputs:
                continue
            number = len(self._events)
            self._alive[key] = (number, weakref.ref(storage, partial(self._released, key, number, nbytes)))
            self._events.append((number, nbytes))
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        return out


class StepProbe:
    """Real forward and backward passes on synthetic longest-possible batches, measured and then undone."""

    def __init__(self, trainer: RerankerTrainer):
        self.trainer = trainer
        self.args = trainer.args
        self.model = trainer.model
        self._batches: dict[int, dict[str, Any]] = {}
        self._tracker: LiveTensorBytes | None = None

    # -- parameters

    def _parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters())  # a tied weight once

    def weight_bytes(self) -> tuple[int, int, str]:
        """Bytes of the unique parameter and buffer storages, the parameter count and the main dtype."""
        storages: dict[int, int] = {}
        by_dtype: dict[str, int] = {}
        for tensor in [*self.model.parameters(), *self.model.buffers()]:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        parameters = 0
        for p in self._parameters():
            parameters += p.numel()
            name = str(p.dtype).removeprefix("torch.")
            by_dtype[name] = by_dtype.get(name, 0) + p.numel() * p.element_size()
        dtype = max(by_dtype, key=by_dtype.get) if by_dtype else "?"
        return sum(storages.values()), parameters, dtype

    def optimizer_bytes(self, trainable_bytes: int, trainable: int) -> tuple[int, str]:
        """Optimizer state for ``args.optim``: states per trainable parameter, in the parameters' dtype."""
        name = str(getattr(self.args.optim, "value", self.args.optim))
        if "8bit" in name:
            return 2 * trainable, f"{name}: 2 one-byte states per trainable parameter"
        if "4bit" in name:
            return trainable, f"{name}: 2 half-byte states per trainable parameter"
        if name.startswith(("lomo", "adalomo")) or name in ("sgd",):
            return 0, f"{name}: no per-parameter state"
        if "adafactor" in name:
            return 0, f"{name}: factored second moments (small)"
        states = (
            3
            if "ademamix" in name
            else 1
            if any(k in name for k in ("lion", "rmsprop", "adagrad", "sgd"))
            else 2
        )
        return states * trainable_bytes, f"{name}: {states} state(s) per trainable parameter"

    # -- batches

    def _longest_prompt(self) -> str | None:
        records = getattr(self.trainer.train_dataset, "records", None)
        if records is None or "prompt" not in getattr(records, "column_names", []):
            return None
        # the longest in characters, then the longest of those in tokens
        prompts = sorted({p for p in records["prompt"] if p}, key=len, reverse=True)[:64]
        tokenizer = self.trainer.processing_class
        if not prompts or tokenizer is None:
            return None
        lengths = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        return max(zip(prompts, lengths, strict=True), key=lambda pair: len(pair[1]))[0]

    def batch(self, rows: int) -> dict[str, Any]:
        """``rows`` rows (groups of 2 passages) as long as the training collator makes them."""
        if rows not in self._batches:
            longest = max(self.args.query_max_len, self.args.passage_max_len) * 4 + 16
            text = " ".join(_PROBE_WORDS[i % len(_PROBE_WORDS)] for i in range(longest))
            prompt = self._longest_prompt()
            teacher = [0.0, 0.0] if self.args.needs_teacher_scores else None
            groups = [TrainGroup(text, [text, text], teacher, prompt) for _ in range(rows // 2)]
            self._batches[rows] = self.trainer.data_collator(groups)
        return self._batches[rows]

    # -- measuring

    def measure(self, checkpointing: bool, rows: int) -> ActivationFit:
        """Forward + backward on 2 and 4 rows: live-tensor timelines and what the process held. When the two ran
        different ops (a family that slices its batch, say, until the slices are full), twice the rows again,
        up to the step's ``rows``, so the two probes are of the same kind as the step."""
        device = self.args.device
        results: dict[int, tuple[torch.Tensor, int | None]] = {}
        with leave_no_trace(self.trainer, checkpointing, self._on_gradient):
            if device.type == "cpu":
                _touch(self.model)  # weights mapped from their file count as loaded, not as the probe's
                _settle_malloc_threshold()
            small, large = PROBE_ROWS
            for n in (small, large):
                results[n] = self._probe(n, device)
            limit = rows + rows % 2
            while results[small][0].shape != results[large][0].shape and large < limit:
                small, large = large, min(2 * large, limit)
                results[large] = self._probe(large, device)
        (live_small, held_small), (live_large, held_large) = results[small], results[large]
        held = None if held_small is None or held_large is None else (held_small, held_large)
        return ActivationFit.from_timelines((small, large), (live_small, live_large), held)

    def _probe(self, rows: int, device: torch.device) -> tuple[torch.Tensor, int | None]:
        # the Trainer's own input preparation; private (no public hook): tests/test_trainer_hooks.py
        return self._one_step(self.trainer._prepare_inputs(dict(self.batch(rows))), device)

    def _on_gradient(self, gradient: torch.Tensor) -> None:
        if self._tracker is not None:
            self._tracker.mark_gradient(gradient)

    def _one_step(self, inputs: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, int | None]:
        """The live-tensor timeline (CUDA: its peak only) and the process's peak growth (CPU: resident memory,
        CUDA: the allocator's reserve) of one forward and backward."""
        trainer = self.trainer
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            allocated, reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
            tracker: contextlib.AbstractContextManager = contextlib.nullcontext()
            process: contextlib.AbstractContextManager = contextlib.nullcontext()
        else:
            tracker, process = LiveTensorBytes(device.type), ProcessPeak()
            self._tracker = tracker
        with process, tracker:
            with trainer.compute_loss_context_manager(), trainer.accelerator.autocast():
                loss = trainer.compute_loss(self.model, inputs)
            loss.backward()
            del loss
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - allocated
            held = torch.cuda.max_memory_reserved(device) - reserved
            torch.cuda.empty_cache()
            return torch.tensor([float(peak)], dtype=torch.float64), int(held)
        self._tracker = None
        timeline = tracker.timeline_without_gradients()  # the gradients are counted whole, apart
        held = (
            None if process.peak is None else int(process.peak * float(timeline.max()) / max(tracker.peak, 1))
        )
        return timeline, held

    def estimate(self, free: int, free_source: str) -> MemoryEstimate:
        args = self.args
        weights, parameters, dtype = self.weight_bytes()
        trainable_params = [p for p in self._parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in trainable_params)
        trainable_bytes = sum(p.numel() * p.element_size() for p in trainable_params)
        optimizer, optimizer_note = self.optimizer_bytes(trainable_bytes, trainable)
        distributed = args.world_size > 1 and args.parallel_mode.value == "distributed"
        checkpointing = checkpointing_on(args)
        fit = self.measure(checkpointing, args.per_device_train_batch_size * args.train_group_size)
        return MemoryEstimate(
            device=str(args.device),
            processes=processes_sharing(args.device, args.world_size),
            weights=weights,
            parameters=parameters,
            weight_dtype=dtype,
            trainable=trainable,
            gradients=trainable_bytes,
            optimizer_state=optimizer,
            optimizer=optimizer_note,
            gradient_buckets=trainable_bytes if distributed else 0,
            activations=fit,
            queries=args.per_device_train_batch_size,
            group_size=args.train_group_size,
            accumulation=args.gradient_accumulation_steps,
            tokens=int(self.batch(PROBE_ROWS[0])["input_ids"].shape[-1]),
            checkpointing=checkpointing,
            free=free,
            free_source=free_source,
        )

    def alternatives(self, estimate: MemoryEstimate) -> list[str]:
        """Settings that fit, with what each needs (gradient checkpointing measured on its own probes)."""
        checkpointed = None
        if not estimate.checkpointing:
            checkpointed = self.measure(True, estimate.rows)
        return advice(estimate, checkpointed, self.args)


def advice(estimate: MemoryEstimate, checkpointed: ActivationFit | None, args: Any) -> list[str]:
    """What to change, with numbers: a smaller micro-batch (the same queries per optimizer step), gradient
    checkpointing (measured when ``checkpointed`` is given), glibc's threshold on CPU, half-precision weights;
    and how to turn the check off."""
    per_step = estimate.queries * estimate.accumulation
    n = estimate.processes
    usable = estimate.usable
    lines: list[str] = []

    def needs(need: int) -> str:
        return f"needs ~{gib(need / n)} more per process" + (f" ({gib(need)} for {n})" if n > 1 else "")

    def batch_line(queries: int, extra: str = "", fit: ActivationFit | None = None) -> str:
        return (
            f"--per_device_train_batch_size {queries} --gradient_accumulation_steps {per_step // queries}{extra} "
            f"keeps the same {per_step} queries per optimizer step and {needs(estimate.needed_for(queries, fit))}"
        )

    divisors = [q for q in range(min(estimate.queries, per_step), 0, -1) if per_step % q == 0]
    fitting = [q for q in divisors if estimate.needed_for(q) <= usable]
    something_fits = bool(fitting)
    if fitting and fitting[0] < estimate.queries:
        lines.append(batch_line(fitting[0]))
        if fitting[0] != 1:
            lines.append(batch_line(1))
    if checkpointed is not None:
        need = estimate.needed_for(estimate.queries, checkpointed)
        lines.append(
            f"--{flag_name()} true (measured: activations {gib(checkpointed.at(estimate.rows))} instead "
            f"of {gib(estimate.activation_bytes)}) {needs(need)}: {'fits' if need <= usable else 'too much too'}"
        )
        with_checkpointing = [q for q in divisors if estimate.needed_for(q, checkpointed) <= usable]
        something_fits |= bool(with_checkpointing)
        if need > usable and with_checkpointing:
            lines.append(batch_line(with_checkpointing[0], f" --{flag_name()} true", checkpointed))
    if estimate.device.startswith("cpu") and estimate.activations.overhead > 1.15:
        fit = replace(estimate.activations, overhead=1.0)
        need = estimate.needed_for(estimate.queries, fit)
        something_fits |= need <= usable
        lines.append(
            f"MALLOC_MMAP_THRESHOLD_=131072 in the environment makes glibc return freed activations to the OS "
            f"(activations {gib(fit.at(estimate.rows))} instead of {gib(estimate.activation_bytes)}; steps ran "
            f"1.4-1.7x slower on a 2-core CPU) and {needs(need)}: {'fits' if need <= usable else 'too much too'}"
        )
    if getattr(args, "torch_dtype", None) == "float32":
        lines.append(
            f"--torch_dtype bfloat16 halves the weights ({gib(estimate.weights)} -> {gib(estimate.weights / 2)}) "
            "and roughly the activations (not measured)"
        )
    if not something_fits:
        lines.append(
            f"none of the measured settings fits: even 1 query x {estimate.group_size} passages of "
            f"{estimate.tokens} tokens is too much here; lower --train_group_size, --passage_max_len or "
            "--query_max_len, or use a machine with more memory"
        )
    lines.append("--memory_check false skips this check (the run may then be killed for memory)")
    return lines


# ---- leaving no trace ------------------------------------------------------------------------------------


def _modules(trainer: RerankerTrainer) -> list[torch.nn.Module]:
    """Every module of the Trainer's model, plus the family model's backbone (not a registered submodule)."""
    found: dict[int, torch.nn.Module] = {id(m): m for m in trainer.model.modules()}
    backbone = getattr(trainer.reranker, "backbone", None)
    if isinstance(backbone, torch.nn.Module):
        found.setdefault(id(backbone), backbone)
    return list(found.values())


_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
_HOOK_ATTRS = ("_require_grads_hooks", "_require_grads_hook", "_gradient_checkpointing_func")
_MISSING = object()


@contextlib.contextmanager
def leave_no_trace(
    trainer: RerankerTrainer, checkpointing: bool, on_gradient: Callable[[torch.Tensor], None] | None = None
) -> Iterator[None]:
    """Train mode and ``checkpointing`` (as the Trainer enables it) for the probe, each gradient shown to
    ``on_gradient`` and dropped once accumulated; afterwards, every random state, mode, gradient, checkpointing
    flag, hook and loss-part sum as it was."""
    modules = _modules(trainer)
    modes = [(m, m.training) for m in modules]
    flags = [(m, m.gradient_checkpointing) for m in modules if hasattr(m, "gradient_checkpointing")]
    attrs = [(m, name, m.__dict__.get(name, _MISSING)) for m in modules for name in _HOOK_ATTRS]
    hooks = [(m, name, set(getattr(m, name, {}))) for m in modules for name in _HOOK_DICTS]
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    grads = [p.grad for p in params]
    loss_parts = getattr(trainer, "loss_parts", None)
    sums = dict(loss_parts.sums) if loss_parts is not None and hasattr(loss_parts, "sums") else None
    python_state = random.getstate()
    numpy_state = _numpy_state()
    cuda = [trainer.args.device.index or 0] if trainer.args.device.type == "cuda" else []
    handles = []
    try:
        with torch.random.fork_rng(devices=cuda):
            for p in params:
                p.grad = None
                # gradients are counted whole, apart: the probe measures activations
                handles.append(p.register_post_accumulate_grad_hook(partial(_drop_grad, on_gradient)))
            trainer.model.train()
            if checkpointing:
                _enable_checkpointing(trainer)
            yield
    finally:
        for handle in handles:
            handle.remove()
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad
        for m, training in modes:
            m.training = training
        for m, flag in flags:
            m.gradient_checkpointing = flag
        for m, name, value in attrs:
            if value is _MISSING:
                m.__dict__.pop(name, None)
            else:
                m.__dict__[name] = value
        for m, name, keys in hooks:  # hooks the probe's checkpointing added (in place: handles point here)
            table = getattr(m, name, None)
            for key in [k for k in (table or {}) if k not in keys]:
                del table[key]
        if sums is not None:
            loss_parts.sums = sums
        random.setstate(python_state)
        _restore_numpy_state(numpy_state)


def _touch(model: torch.nn.Module) -> None:
    """Read every weight once (pages of a memory-mapped checkpoint come in now, not inside a measurement)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.numel():
                tensor.reshape(-1)[:: max(4096 // tensor.element_size(), 1)].sum()


def _drop_grad(on_gradient: Callable[[torch.Tensor], None] | None, parameter: torch.Tensor) -> None:
    if on_gradient is not None and parameter.grad is not None:
        on_gradient(parameter.grad)
    parameter.grad = None


def _numpy_state() -> Any:
    return numpy.random.get_state()


def _restore_numpy_state(state: Any) -> None:
    if state is not None:
        numpy.random.set_state(state)


def _enable_checkpointing(trainer: RerankerTrainer) -> None:
    """Gradient checkpointing switched on as `Trainer.train` switches it on (it does so only inside train())."""
    enable_checkpointing(trainer.model, checkpointing_kwargs(trainer.args) or {"use_reentrant": False})


# ---- out of memory in a step -----------------------------------------------------------------------------


def explain_oom(error: BaseException, trainer: RerankerTrainer) -> str:
    """What ran out, the step's shape, the estimate made before training (if any), and what to change."""
    args = trainer.args
    device = args.device
    estimate: MemoryEstimate | None = getattr(trainer, "memory_estimate", None)
    facts = ""
    if device.type == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(device)
        facts = (
            f" ({device}: {gib(total)} in all, {gib(free)} free now; this process's peak "
            f"{gib(torch.cuda.max_memory_allocated(device))} allocated)"
        )
    queries, group = args.per_device_train_batch_size, args.train_group_size
    lines = [
        f"Out of memory in a training step{facts}: {queries} queries x {group} passages per micro-batch, "
        f"gradient_accumulation_steps {args.gradient_accumulation_steps}, gradient checkpointing "
        f"{'on' if checkpointing_on(args) else 'off'}.",
        f"  ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})",
    ]
    if estimate is not None:
        lines.append(estimate.breakdown())
        lines.append("What fits instead (from the estimate made before training):")
        lines += [f"  {a}" for a in (estimate.alternatives or advice(estimate, None, args))]
    else:
        per_step = queries * args.gradient_accumulation_steps
        lines.append("What to change:")
        if queries > 1:
            lines.append(
                f"  --per_device_train_batch_size 1 --gradient_accumulation_steps {per_step} keeps the same "
                f"{per_step} queries per optimizer step with 1/{queries} of the activations"
            )
        if not checkpointing_on(args):
            lines.append(f"  --{flag_name()} true keeps one layer's activations instead of all of them")
        if getattr(args, "torch_dtype", None) == "float32":
            lines.append("  --torch_dtype bfloat16 halves the weights and roughly the activations")
        lines.append(
            f"  a smaller --train_group_size (now {group}) or --passage_max_len (now {args.passage_max_len})"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def out_of_memory_explained(trainer: RerankerTrainer) -> Iterator[None]:
    """Around a training step: a CUDA out-of-memory error becomes a `MemoryEstimateError` saying what to change."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        message = explain_oom(error, trainer)
        raise MemoryEstimateError(message, getattr(trainer, "memory_estimate", None)) from error

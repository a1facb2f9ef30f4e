"""What `gpu_bench.py` measures with: device-aware timing and peak memory, the FLOPs of a cross-encoder pass, the
GPU's dense fp16 peak, a time budget that skips a part that would not fit, and each part's deadline, at which its
rounds or steps stop, so no part overruns a lease.

CUDA-only calls (synchronize, peak-memory counters) are behind device checks, so the CPU smoke run takes the same
functions.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

Result = TypeVar("Result")

# dense (not sparse) fp16/bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s; matched on the device name,
# first match wins (so PCIe and NVL parts are told apart from SXM ones); other GPUs get no share of peak
DENSE_FP16_PEAK_TFLOPS: tuple[tuple[str, float | None], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", None),
    ("H200 NVL", None),
    ("H100", 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    ("H200", 989.0),
)


def dense_fp16_peak_tflops(device_name: str) -> float | None:
    """The datasheet's dense fp16 peak for this GPU, None when it is not one we know."""
    for key, peak in DENSE_FP16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock times cover it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], Result], device: torch.device) -> tuple[float, Result]:
    """Seconds of ``run()`` including the GPU work it queued, and its result."""
    synchronize(device)
    start = time.perf_counter()
    result = run()
    synchronize(device)
    return time.perf_counter() - start, result


def release_memory(device: torch.device) -> None:
    """Free what the last section left behind, so the next one's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    release_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated since the last reset; on the CPU, the process's peak RSS (which never resets:
    in the smoke run it only shows the path works)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated"
    return "process peak RSS (CPU: never reset, so not per section)"


def encoder_forward_flops(model: torch.nn.Module, lengths: Sequence[int]) -> float:
    """FLOPs of one forward pass of a BERT/XLM-R sequence classifier over sequences of these real lengths.

    ``2 x P_layers x sum(s) + 4 x L x d x sum(s^2) + 2 x P_head x n``: each weight of the L encoder layers is
    one multiply-add per real token (P_layers includes biases and LayerNorms, under 0.2% of it); attention's
    scores (QK^T) and weighted sum (AV) are 2 x s^2 x d multiply-adds per layer for a sequence of s tokens; the
    pooler and classifier run once per sequence (n sequences). Embedding lookups do no arithmetic. Padding is
    not counted: these are the FLOPs the scores need, whatever a tool wastes on padding.
    """
    per_token = per_sequence = 0
    for name, parameter in model.named_parameters():
        if "embeddings" in name:
            continue
        if ".layer." in name:
            per_token += parameter.numel()
        else:
            per_sequence += parameter.numel()
    config = model.config
    tokens = sum(lengths)
    squares = sum(s * s for s in lengths)
    return (
        2.0 * per_token * tokens
        + 4.0 * config.num_hidden_layers * config.hidden_size * squares
        + 2.0 * per_sequence * len(lengths)
    )


def process_start() -> float:
    """When this process started, on the ``time.monotonic()`` clock (from /proc on Linux; elsewhere: now), so a
    budget counts the seconds that importing torch and transformers took."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, in clock ticks
    except (OSError, ValueError, IndexError):
        age = 0.0
    if not 0.0 <= age <= MAX_PLAUSIBLE_AGE_S:  # a sandbox's /proc or clocks disagree: count from now instead
        print(f"gpu_bench: process age read as {age:.0f} s; the budget counts from now", file=sys.stderr)
        age = 0.0
    return time.monotonic() - age


MAX_PLAUSIBLE_AGE_S = 120.0  # imports take seconds; an older start is a misreading, never a spent budget


PART_ALLOWANCE = 1.5  # a part may run this many times its expected seconds (within the budget), then stops


@dataclass(frozen=True)
class Deadline:
    """When a part stops starting rounds or steps (``time.monotonic()`` seconds): the first timed round or step
    always runs, so a part that got through its loads and warm-up has numbers; a later one only if it fits."""

    at: float

    def left(self) -> float:
        return self.at - time.monotonic()

    def fits(self, seconds: float) -> bool:
        """Whether work of about ``seconds`` ends before the deadline."""
        return self.left() >= seconds


class Budget:
    """Wall-clock seconds for the whole run, counted from ``start`` (the process's start, so imports count): a part
    starts only if its expected time still fits, and must stop by its deadline."""

    def __init__(self, seconds: float, start: float | None = None):
        self.seconds = seconds
        self.start = time.monotonic() if start is None else start

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def allows(self, expected_seconds: float) -> bool:
        return self.left() >= expected_seconds

    def deadline(self, expected_seconds: float) -> Deadline:
        """A part's deadline: ``PART_ALLOWANCE`` x its expected seconds from now, never past the budget's end; a
        part with no estimate (0: the smoke run) may use what is left of the budget."""
        end = self.start + self.seconds
        if expected_seconds <= 0:
            return Deadline(end)
        return Deadline(min(time.monotonic() + PART_ALLOWANCE * expected_seconds, end))

    def skipped(self, expected_seconds: float) -> dict[str, Any]:
        """What a skipped part records instead of its numbers."""
        return {
            "skipped": f"time budget: {self.left():.0f} s left of {self.seconds:.0f} s, "
            f"the part expects {expected_seconds:.0f} s"
        }

"""``backend="auto"``: the fastest exact CPU backend for this checkpoint on this machine, measured once and cached.

Why measured: which of torch, ONNX Runtime and OpenVINO is fastest in fp32 depends on the processor (ONNX
Runtime beat torch on an AMD EPYC and lost to it on an Intel Xeon with AMX), on the thread count and on the
model's shape, so no fixed default is right everywhere. A short calibration (a few padded batches of the
checkpoint's own graph) decides; the choice is cached per checkpoint and machine in the rerankforge cache, so
later loads cost nothing. Only exact backends (fp32 math, scores within the export tolerance of torch's) take
part: "auto" never changes scores beyond that. On a GPU, "auto" is torch.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rerankforge.data_tools.files import atomic_write_text
from rerankforge.inference.onnx_backend import EXACT_BACKENDS, cache_key, example_batch, graph_scorer
from rerankforge.trainer.modeling.cross_encoder import score_pairs
from rerankforge.trainer.modeling.sources import cache_root

logger = logging.getLogger(__name__)

AUTO = "auto"
CALIBRATION_FILE = "backend-choice.json"
CALIBRATION_SHAPES = ((16, 64), (16, 192))  # (rows, tokens): short and typical candidate pairs
CALIBRATION_ROUNDS = 3  # the fastest of 3 timed calls per shape, after a warm-up
ENVIRONMENT_DEFAULT = "RERANKFORGE_BACKEND"  # the backend a load gets when none is named


def default_backend() -> str:
    """``RERANKFORGE_BACKEND`` when set (e.g. "torch" to skip the calibration), else "auto"."""
    return os.environ.get(ENVIRONMENT_DEFAULT, AUTO)


def installed_exact_backends() -> list[str]:
    """torch, and the exact graph backends whose runtime is installed (the export needs the onnx package)."""
    backends = ["torch"]
    if importlib.util.find_spec("onnx") is not None:
        if importlib.util.find_spec("onnxruntime") is not None:
            backends.append("onnx")
        if importlib.util.find_spec("openvino") is not None:
            backends.append("openvino")
    return [b for b in EXACT_BACKENDS if b in backends]


def machine_key() -> str:
    """What the choice depends on besides the checkpoint: processor, threads and runtime versions."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "-"

    processor = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{processor} | {os.cpu_count()} cores | {torch.get_num_threads()} threads | torch {torch.__version__} | "
        f"onnxruntime {installed('onnxruntime')} | openvino {installed('openvino')}"
    )


def pairs_per_second(score: Callable[[dict], object], batches: list[dict]) -> float:
    """Rows per second of ``score`` on ``batches``: the fastest of a few calls each, after one warm-up."""
    seconds = 0.0
    for batch in batches:
        score(batch)
        timings = []
        for _ in range(CALIBRATION_ROUNDS):
            start = time.perf_counter()
            score(batch)
            timings.append(time.perf_counter() - start)
        seconds += min(timings)
    return sum(len(next(iter(b.values()))) for b in batches) / seconds


def calibration_batches(tokenizer, names: list[str], max_length: int) -> list[dict[str, torch.Tensor]]:
    batches = []
    for rows, tokens in CALIBRATION_SHAPES:
        tokens = min(tokens, max_length)
        pair = example_batch(tokenizer, names, tokens)  # two rows, the second padded: masks take part
        batches.append({name: value.repeat(rows // 2, 1) for name, value in pair.items()})
    return batches


def calibrate(model, tokenizer, model_path: str, names: list[str], max_length: int, candidates: list[str]):
    """Pairs/s of each candidate on the same batches, and the scorers built on the way (reused by the load)."""
    batches = calibration_batches(tokenizer, names, max_length)
    speeds: dict[str, float] = {}
    scorers: dict[str, object] = {}
    for backend in candidates:
        if backend == "torch":
            with torch.inference_mode():
                speeds[backend] = pairs_per_second(lambda b: score_pairs(model, b), batches)
            continue
        try:
            scorer = graph_scorer(model, tokenizer, model_path, backend)
        except (ImportError, RuntimeError) as error:  # not installed, or an export that is not exact
            logger.info("backend %s left out of the calibration: %s", backend, error)
            continue
        numpy_batches = [{k: v.numpy() for k, v in b.items()} for b in batches]
        speeds[backend] = pairs_per_second(scorer, numpy_batches)
        scorers[backend] = scorer
    return speeds, scorers


def choose_backend(
    model, tokenizer, model_path: str, names: list[str], max_length: int, device: torch.device
):
    """The backend "auto" means here, and its graph scorer (None for torch): from the cache when this
    checkpoint was calibrated on this machine before, else measured now and cached."""
    candidates = installed_exact_backends()
    if device.type != "cpu" or len(candidates) == 1:
        return "torch", None
    from filelock import FileLock

    cache = cache_root() / CALIBRATION_FILE
    cache.parent.mkdir(parents=True, exist_ok=True)
    key = f"{cache_key(model_path)} | {machine_key()}"
    with FileLock(str(cache) + ".lock"):
        known = json.loads(cache.read_text()) if cache.is_file() else {}
        if key in known and known[key]["backend"] in candidates:
            backend = known[key]["backend"]
            scorer = None if backend == "torch" else graph_scorer(model, tokenizer, model_path, backend)
            return backend, scorer
        logger.info(
            "backend auto: measuring %s on this machine for %s (once)", ", ".join(candidates), model_path
        )
        speeds, scorers = calibrate(model, tokenizer, model_path, names, max_length, candidates)
        backend = max(speeds, key=speeds.get)
        known[key] = {"backend": backend, "pairs_per_second": {k: round(v, 1) for k, v in speeds.items()},
                      "date": time.strftime("%Y-%m-%d")}  # fmt: skip
        atomic_write_text(cache, json.dumps(known, indent=2) + "\n")
    measured = ", ".join(f"{name} {speed:.0f}" for name, speed in sorted(speeds.items(), key=lambda x: -x[1]))
    logger.info("backend auto: %s (pairs/s here: %s); cached in %s", backend, measured, cache)
    return backend, scorers.get(backend)

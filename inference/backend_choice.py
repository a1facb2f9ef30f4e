"""``backend="auto"``: the fastest exact CPU backend for this checkpoint on this machine, measured once and cached.

Why measured: which of torch, ONNX Runtime and OpenVINO is fastest in fp32 depends on the processor (ONNX
Runtime beat torch on an AMD EPYC and lost to it on an Intel Xeon with AMX), on the thread count and on the
model's shape, so no fixed default is right everywhere. A short calibration (a few padded batches of the
checkpoint's own graph) decides; the choice is cached per checkpoint and machine in the rerankforge cache, so
later loads cost nothing. Only exact backends (fp32 math, scores within the export tolerance of torch's) take
part: "auto" never changes scores beyond that. On a GPU, "auto" is torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from filelock import FileLock

from rerankforge.inference.modeling.cross_encoder import score_pairs
from rerankforge.inference.modeling.files import atomic_write_text
from rerankforge.inference.modeling.precision import DTYPES, native_bf16
from rerankforge.inference.modeling.sources import cache_root
from rerankforge.inference.onnx_backend import (
    EXACT_BACKENDS,
    GRAPH_BACKENDS,
    cache_key,
    example_batch,
    graph_scorer,
)

logger = logging.getLogger(__name__)

AUTO = "auto"
CALIBRATION_FOLDER = "backend-choice"  # one JSON file per checkpoint and machine
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
        except Exception as error:  # noqa: BLE001 - not installed, not exact, or an export this model fails:
            # the default load must not break on it; that backend just does not compete
            logger.warning("backend auto: %s left out (%s: %s)", backend, type(error).__name__, error)
            continue
        numpy_batches = [{k: v.numpy() for k, v in b.items()} for b in batches]
        speeds[backend] = pairs_per_second(scorer, numpy_batches)
        scorers[backend] = scorer
    return speeds, scorers


def choice_file(model_path: str) -> tuple[Path, str]:
    """One file per checkpoint and machine (so a damaged one, or a slow first export, concerns that load alone)
    and the key it must hold."""
    key = f"{cache_key(model_path)} | {machine_key()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return cache_root() / CALIBRATION_FOLDER / f"{digest}.json", key


def read_choice(path: Path, key: str, candidates: list[str]) -> str | None:
    """The cached backend, or None when there is none usable (absent, damaged, for another key, or a backend
    no longer installed): then it is measured again and the file rewritten."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        backend = record["backend"] if record.get("key") == key else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        logger.warning("backend auto: %s is unreadable (%s); measuring again", path, error)
        return None
    return backend if backend in candidates else None


def choose_backend(
    model, tokenizer, model_path: str, names: list[str], max_length: int, device: torch.device
):
    """The backend "auto" means here, and its graph scorer (None for torch): from the cache when this
    checkpoint was calibrated on this machine before, else measured now and cached. Without a writable cache
    (a read-only home) it is torch, with a warning: nothing is measured that could not be kept."""
    candidates = installed_exact_backends()
    if device.type != "cpu" or len(candidates) == 1:
        return "torch", None

    path, key = choice_file(model_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
        lock.acquire()
    except OSError as error:
        logger.warning(
            "backend auto: the cache %s cannot be written (%s); scoring with torch", path.parent, error
        )
        return "torch", None
    try:
        backend = read_choice(path, key, candidates)
        if backend is not None:
            try:
                scorer = None if backend == "torch" else graph_scorer(model, tokenizer, model_path, backend)
            except Exception as error:  # noqa: BLE001 - the cached graph went missing and no longer exports
                logger.warning(
                    "backend auto: the cached choice %s failed (%s); scoring with torch", backend, error
                )
                return "torch", None
            return backend, scorer
        logger.warning(  # a one-time pause the user should see explained (the export can take a minute)
            "backend auto: exporting %s and timing %s on this machine, once (the choice is cached; "
            "backend='torch' or RERANKFORGE_BACKEND=torch skips this)", model_path, ", ".join(candidates),
        )  # fmt: skip
        speeds, scorers = calibrate(model, tokenizer, model_path, names, max_length, candidates)
        backend = max(speeds, key=speeds.get)
        record = {"key": key, "backend": backend, "pairs_per_second": {k: round(v, 1) for k, v in speeds.items()},
                  "date": time.strftime("%Y-%m-%d")}  # fmt: skip
        try:
            atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        except (
            OSError
        ) as error:  # a full disk: the choice holds for this load, and is measured again next time
            logger.warning("backend auto: could not cache the choice in %s (%s)", path, error)
    finally:
        lock.release()
    measured = ", ".join(f"{name} {speed:.0f}" for name, speed in sorted(speeds.items(), key=lambda x: -x[1]))
    logger.info("backend auto: %s (pairs/s here: %s); cached in %s", backend, measured, path)
    return backend, scorers.get(backend)


def auto_dtype(device: str | torch.device | None, backend: str | None = None) -> torch.dtype:
    """Scoring precision for ``--dtype auto``: bfloat16 where the device computes in it, else float32; always
    float32 for the CPU graph backends (named, or set by RERANKFORGE_BACKEND), which run the fp32 export."""
    if (backend or default_backend()) in GRAPH_BACKENDS:
        return torch.float32
    on_cpu = torch.device(device).type == "cpu" if device is not None else not torch.cuda.is_available()
    return torch.bfloat16 if native_bf16(use_cpu=on_cpu) else torch.float32


def scoring_dtype(name: str, device: str | torch.device | None, backend: str | None = None) -> torch.dtype:
    """A ``--dtype`` / ``--teacher-dtype`` value as a torch dtype: "auto" resolved for the device and backend,
    any other name ("float32", "bfloat16", "float16") as it is."""
    return auto_dtype(device, backend) if name == AUTO else DTYPES[name]

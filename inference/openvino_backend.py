"""OpenVINO backend for cross-encoders on the CPU: the cached ONNX graph compiled by OpenVINO's CPU plugin.

Why: which CPU backend is fastest changes with the processor (on an Intel Xeon with AMX, ONNX Runtime's fp32 ran
slower than torch; on an AMD EPYC faster), and OpenVINO runs bf16 matrix work on AMX and AVX-512 bf16 units that
the other backends leave idle. "openvino" keeps fp32 math (checked against torch like the ONNX export);
"openvino-bf16" computes in bf16 where the processor has it: faster, scores differ (opt-in, its nDCG@10 is in
benchmarks/RESULTS.md next to its speed).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16"}


def require_openvino():
    try:
        import openvino  # optional: the [openvino] extra
    except ImportError as error:
        raise ImportError("backend='openvino' needs OpenVINO: pip install 'rerankforge[openvino]'") from error
    return openvino


class OpenVinoScorer:
    """One compiled OpenVINO model; ``__call__`` takes padded numpy inputs and returns one fp32 score per row.

    The same interface as `OnnxScorer`, so the scoring pipeline takes either.
    """

    def __init__(self, path: Path, precision: str = "f32", threads: int | None = None):
        openvino = require_openvino()
        core = openvino.Core()
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",  # one request at a time, all cores on it
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
        }
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.names = [port.get_any_name() for port in self.compiled.inputs]
        self.request = self.compiled.create_infer_request()
        self.path = path
        applied = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = (
            applied.to_string() if hasattr(applied, "to_string") else str(applied)
        )  # "f32", "bf16"
        if precision == "bf16" and "bf16" not in self.precision:
            logger.warning(
                "this processor has no bf16 units OpenVINO can use: openvino-bf16 runs in %s", self.precision
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {name: np.ascontiguousarray(batch[name], dtype=np.int64) for name in self.names}
        outputs = self.request.infer(feeds)
        return np.asarray(next(iter(outputs.values()))).reshape(-1).astype(np.float32)

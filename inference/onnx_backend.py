"""ONNX Runtime backend for cross-encoders on the CPU: the same fp32 scores faster, or int8 weights (opt-in).

Why: on a CPU the torch forward is the whole cost of scoring (tokenizing 2,000 pairs takes 0.1 s of ~50 s), and
ONNX Runtime's fused graph (attention, LayerNorm, GELU) runs the same fp32 math in less time. The int8 variant
quantizes the weights of every MatMul dynamically: faster again, scores no longer equal, so it is opt-in and
its ranking quality is measured in `benchmarks/RESULTS.md` next to its speed.

The graph is exported once per checkpoint into the cache (atomic folder, file lock), and checked against the
torch model before it is used: an export that does not give the torch scores within ``EXPORT_TOLERANCE`` is
refused with an error instead of scoring wrongly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import transformers
from filelock import FileLock
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import cached_file

from rerankforge.inference.modeling.cross_encoder import MODEL_INPUT_NAMES, score_pairs
from rerankforge.inference.modeling.files import atomic_folder
from rerankforge.inference.modeling.sources import cache_root
from rerankforge.inference.openvino_backend import PRECISIONS, OpenVinoScorer, require_openvino

logger = logging.getLogger(__name__)

GRAPH_BACKENDS = ("onnx", "onnx-int8", "openvino", "openvino-bf16")  # CPU backends on the exported graph
EXACT_BACKENDS = ("torch", "onnx", "openvino")  # fp32 math: the same scores within EXPORT_TOLERANCE
BACKENDS = ("torch", *GRAPH_BACKENDS)
OPSET = 17
EXPORT_TOLERANCE = 1e-4
FP32_FILE = "model.onnx"
INT8_FOLDER = "int8"
INT8_FILE = "model.onnx"
LARGE_MODEL_BYTES = 1_800_000_000  # ONNX protobuf files stop at 2 GB: larger graphs keep weights outside
FORMAT_VERSION = 2  # bump when the export changes, so old cache entries are not reused


def require_onnxruntime():
    try:
        import onnxruntime  # optional: the [onnx] extra
    except ImportError as error:
        raise ImportError("backend='onnx' needs ONNX Runtime: pip install 'rerankforge[onnx]'") from error
    return onnxruntime


def input_names(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The model inputs this tokenizer produces, in the order the graph takes them."""
    return [name for name in MODEL_INPUT_NAMES if name in tokenizer.model_input_names]


def local_folder(model_path: str | Path) -> Path:
    """The folder holding the checkpoint's files: the path itself, or a Hub name's downloaded snapshot."""
    if Path(model_path).is_dir():
        return Path(model_path)

    config = cached_file(str(model_path), "config.json")
    if config is None:
        raise FileNotFoundError(f"{model_path}: no config.json found locally or on the Hub")
    return Path(config).parent


def cache_key(model_path: str | Path) -> str:
    """Content hash of everything the graph depends on: weights, config, tokenizer files, remote code, and the
    versions of torch and transformers (a modelling change must not reuse an old graph). Hashed once per
    process for files of unchanged size and modification time: a load asks for it more than once."""
    folder = local_folder(model_path)
    names = ("config.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.py"))
    files += [folder / name for name in names if (folder / name).is_file()]
    stamps = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return hashed_files(stamps)


@functools.lru_cache(maxsize=64)
def hashed_files(stamps: tuple[tuple[str, int, int], ...]) -> str:

    digest = hashlib.sha256()
    for name, _, _ in stamps:
        digest.update(Path(name).name.encode())
        with open(name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    versions = (
        f"torch {torch.__version__} transformers {transformers.__version__} opset {OPSET} v{FORMAT_VERSION}"
    )
    digest.update(versions.encode())
    return digest.hexdigest()[:24]


def example_batch(
    tokenizer: PreTrainedTokenizerBase, names: list[str], length: int = 24
) -> dict[str, torch.Tensor]:
    """Two rows, the second padded: tracing with padding keeps the mask in the graph (an all-ones mask lets
    transformers skip it, and the trace would then ignore padding at run time)."""
    generator = torch.Generator().manual_seed(0)
    low = max(len(tokenizer.all_special_ids), 5)
    ids = torch.randint(low, tokenizer.vocab_size, (2, length), generator=generator)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length // 2 :] = 0
    ids[1, length // 2 :] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    batch["token_type_ids"][:, length // 3 :] = 1
    return {name: batch[name] for name in names}


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in, the (batch, 1) logits out: the signature the exporter traces."""

    def __init__(self, model: PreTrainedModel, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True))).logits


def export_onnx(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    """Trace the model in eager attention (ONNX Runtime fuses that pattern) with dynamic batch and length."""
    names = input_names(tokenizer)
    example = example_batch(tokenizer, names)
    previous = model.config._attn_implementation
    was_training = model.training
    model.set_attn_implementation("eager")
    # the exporter restores the wrapper's mode afterwards: a wrapper left in training mode would switch the
    # caller's model to training (dropout on) as a side effect
    wrapper = _LogitsOnly(model, names).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # the exporter's deprecation and tracer notices are not the user's
            torch.onnx.export(
                wrapper,
                tuple(example[name] for name in names),
                str(path),
                input_names=names,
                output_names=["logits"],
                dynamic_axes={name: {0: "batch", 1: "sequence"} for name in names},
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter's graph gets ONNX Runtime's attention fusion
            )
    finally:
        model.set_attn_implementation(previous)
        model.train(was_training)


def quantize_int8(fp32_path: Path, int8_path: Path) -> None:
    """Dynamic int8 quantization of the MatMul weights; activations are quantized per batch at run time, so a
    pair's int8 score depends slightly on the other pairs in its batch."""
    require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic  # optional: the [onnx] extra
    from onnxruntime.quantization.shape_inference import quant_pre_process  # optional: the [onnx] extra

    fp32_bytes = sum(f.stat().st_size for f in fp32_path.parent.iterdir() if f.is_file())
    if fp32_bytes > LARGE_MODEL_BYTES:  # weights beside the graph; no pre-processing (it needs one file)
        quantize_dynamic(
            str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, use_external_data_format=True
        )
        return
    prepared = int8_path.with_suffix(".prepared.onnx")  # shape inference + graph cleanup, as ORT advises
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(str(prepared), str(int8_path), weight_type=QuantType.QInt8)
    prepared.unlink()


class OnnxScorer:
    """One ONNX Runtime session; ``__call__`` takes padded numpy inputs and returns one fp32 score per row."""

    def __init__(self, path: Path, threads: int | None = None):
        ort = require_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3
        # batch shapes change with every batch: no per-shape memory plans (they piled up to an out-of-memory
        # kill over a long benchmark); measured no slower
        options.enable_mem_pattern = False
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [graph_input.name for graph_input in self.session.get_inputs()]
        self.path = path

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {name: np.asarray(batch[name], dtype=np.int64) for name in self.names}
        return self.session.run(None, feeds)[0].reshape(-1).astype(np.float32)


def check_export(scorer: OnnxScorer, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> float:
    """Largest score difference to the torch model on padded batches of two lengths; raises past tolerance."""
    worst = 0.0
    for length in (24, 77):
        batch = example_batch(tokenizer, scorer.names, length)
        with torch.inference_mode():
            expected = score_pairs(model, batch).numpy()
        worst = max(worst, float(np.abs(scorer({k: v.numpy() for k, v in batch.items()}) - expected).max()))
    if worst > EXPORT_TOLERANCE:
        raise RuntimeError(
            f"the ONNX export of this model gives scores up to {worst:.2e} away from torch's "
            f"(tolerance {EXPORT_TOLERANCE}); use backend='torch'"
        )
    return worst


def exporting_checker(path: Path):
    """The scorer that checks a fresh export: ONNX Runtime's, or OpenVINO's fp32 where only OpenVINO is
    installed."""
    try:
        require_onnxruntime()
    except ImportError:
        return OpenVinoScorer(path, "f32")
    return OnnxScorer(path)


def graph_scorer(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_path: str | Path, backend: str
):
    """The scorer for a CPU ``backend`` on the cached (or freshly exported and checked) ONNX graph.

    The fp32 graph is exported once per checkpoint; the int8 one only when first asked for, from that graph;
    OpenVINO compiles the fp32 graph (its fp32 scores are checked against torch's, as the export's are).
    """
    if backend not in GRAPH_BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend.startswith("openvino"):
        require_openvino()
    else:
        require_onnxruntime()

    folder = cache_root() / "onnx" / cache_key(model_path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(
        str(folder) + ".lock"
    ):  # one process exports (parallel tests, several workers); others wait
        if not (folder / "export.json").exists():
            logger.info("exporting %s to ONNX in %s (once per checkpoint)", model_path, folder)
            with atomic_folder(folder) as staging:
                export_onnx(model, tokenizer, staging / FP32_FILE)
                scorer = exporting_checker(staging / FP32_FILE)
                difference = check_export(scorer, model, tokenizer)
                record = {"source": str(model_path), "inputs": scorer.names, "opset": OPSET,
                          "max_abs_diff": difference}  # fmt: skip
                (staging / "export.json").write_text(json.dumps(record, indent=2) + "\n")
        if (
            backend == "onnx"
        ):  # checked here too: the export may have been checked by OpenVINO, or an older ORT
            scorer = OnnxScorer(folder / FP32_FILE)
            check_export(scorer, model, tokenizer)
            return scorer
        if backend.startswith("openvino"):
            scorer = OpenVinoScorer(folder / FP32_FILE, PRECISIONS[backend])
            if backend == "openvino":
                check_export(scorer, model, tokenizer)  # OpenVINO's own fp32 kernels, checked too
            return scorer
        if not (folder / INT8_FOLDER / INT8_FILE).exists():
            with atomic_folder(folder / INT8_FOLDER) as staging:
                quantize_int8(folder / FP32_FILE, staging / INT8_FILE)
    return OnnxScorer(folder / INT8_FOLDER / INT8_FILE)

"""`Reranker`: score (query, passage) pairs with a cross-encoder: a thin wrapper over the trainer's model object."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from rerankforge.inference.backend_choice import AUTO, choose_backend, default_backend
from rerankforge.inference.batching import (
    RanksCandidates,
    check_token_budget,
    probabilities,
    with_windows,
)
from rerankforge.inference.collate import PairCollator, as_tensors
from rerankforge.inference.device_pool import ConfigOnlyModel, DevicePool, one_device, several_devices
from rerankforge.inference.long_passages import LongPassages
from rerankforge.inference.modeling.cross_encoder import CrossEncoderModel
from rerankforge.inference.modeling.families import get_family
from rerankforge.inference.modeling.folder_checks import check_model_folder, folder_family
from rerankforge.inference.modeling.pair_encoding import PairEncoder, PairLengths
from rerankforge.inference.modeling.sources import resolve_model_path
from rerankforge.inference.modeling.spec import CrossEncoderSpec, RerankerSpec
from rerankforge.inference.onnx_backend import BACKENDS, OnnxScorer, graph_scorer
from rerankforge.inference.onnx_backend import input_names as encoder_input_names
from rerankforge.inference.pairs import to_pairs
from rerankforge.inference.pipeline import Stages, score_through_pipeline

logger = logging.getLogger(__name__)

Pair = Sequence[str]
DEFAULT_MAX_LENGTH = 512  # FlagReranker's default for folders that rerankforge did not write


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Reranker(RanksCandidates):
    """A cross-encoder reranker: ``compute_score`` for pairs, ``rank`` for one query's candidates.

    ``spec`` is the folder's `rerankforge.json`, None for a folder rerankforge did not write (the model then
    carries a stand-in with FlagReranker's budgets).
    """

    def __init__(
        self,
        model: CrossEncoderModel,
        tokenizer: PreTrainedTokenizerBase,
        lengths: PairLengths,
        device: str | torch.device | None = None,
        batch_size: int = 128,
        spec: RerankerSpec | None = None,
        onnx: OnnxScorer | None = None,
        pool: DevicePool | None = None,
    ):
        self.spec = spec
        self.onnx = (
            onnx  # scores on the exported graph (ONNX Runtime or OpenVINO) instead of torch (CPU only)
        )
        self.backend = "torch" if onnx is None else "graph"  # from_pretrained names it
        self.pool = pool  # several devices: worker processes hold the weights and score (`DevicePool`)
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.lengths = lengths
        self.batch_size = batch_size
        self._encoders: dict[PairLengths, PairEncoder] = {}

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
        batch_size: int = 128,
        backend: str | None = None,
        devices: str | Sequence[str] | None = None,
        max_batch_tokens: int | None = None,
    ) -> Reranker:
        """Our checkpoints (with rerankforge.json) or any one-logit sequence-classification reranker folder.

        ``devices``: two or more ("cuda:0", "cuda:1", ...) score with one worker process per device, each
        loading the weights (this process keeps only the config and tokenizer); ``reranker.pool.close()`` stops
        them (so do garbage collection and exit).

        ``backend``: "auto" (the default, or ``RERANKFORGE_BACKEND``): on a CPU the fastest of the exact
        backends installed, measured once per checkpoint and machine (`backend_choice`), torch on a GPU;
        "torch"; "onnx" (ONNX Runtime) or "openvino" (OpenVINO): CPU, the same fp32 scores within 1e-4;
        "onnx-int8" (int8 weights) or "openvino-bf16" (bf16 math): CPU, faster again, scores differ (opt-in,
        their nDCG@10 is in benchmarks/RESULTS.md). ``max_batch_tokens`` caps each batch's padded tokens.
        """
        backend = checked_backend(backend, dtype, device)
        path = resolve_model_path(name_or_path)
        spec = cls.checked_spec(path)  # None for a folder (or Hub name) rerankforge did not write
        pool_devices, device = several_devices(devices), one_device(device, devices)
        if pool_devices:
            return cls.pooled(path, spec, pool_devices, dtype, trust_remote_code, batch_size, backend,
                              max_batch_tokens)  # fmt: skip
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        stand_in = None if spec is not None else plain_folder_spec(path, tokenizer, trust_remote_code)
        model_class = get_family(spec.family if spec is not None else "cross_encoder").model_class
        model = model_class.from_pretrained(path, dtype, trust_remote_code, spec=stand_in)
        lengths = PairLengths(model.spec.query_max_len, model.spec.passage_max_len, model.spec.max_length)
        backend, scorer = graph_backend(model, tokenizer, path, backend, dtype, device)
        graph_device = "cpu" if scorer is not None else device
        reranker = cls(model, tokenizer, lengths, graph_device, batch_size=batch_size, spec=spec, onnx=scorer)
        reranker.backend, reranker.max_batch_tokens = backend, max_batch_tokens
        return reranker

    @classmethod
    def checked_spec(cls, path: str) -> RerankerSpec | None:
        """The folder's spec once its files are checked; its family must be one this class scores (the
        registry's entry names this class, or a class this one extends: FlagReranker loads what Reranker does)."""
        found = folder_family(path)
        scores_it = found is not None and issubclass(cls, get_family(found).inference_class)
        check_model_folder(path, found if scores_it else "cross_encoder", cls.__name__)
        return RerankerSpec.load(path)

    @classmethod
    def pooled(
        cls,
        path: str,
        spec: RerankerSpec | None,
        devices: list[str],
        dtype: torch.dtype | None,
        trust_remote_code: bool,
        batch_size: int,
        backend: str,
        max_batch_tokens: int | None,
    ) -> Reranker:
        """One worker process per device holds the weights; this process keeps the config and tokenizer."""
        # the workers load while this process reads the tokenizer
        pool = DevicePool(
            path, devices, dtype=dtype, trust_remote_code=trust_remote_code, batch_size=batch_size,
            backend=backend, max_batch_tokens=max_batch_tokens,
        )  # fmt: skip
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        stand_in = None if spec is not None else plain_folder_spec(path, tokenizer, trust_remote_code)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = ConfigOnlyModel(spec or stand_in, config)
        lengths = PairLengths(model.spec.query_max_len, model.spec.passage_max_len, model.spec.max_length)
        pool.wait_ready()
        reranker = cls(model, tokenizer, lengths, device="cpu", batch_size=batch_size, spec=spec, pool=pool)
        reranker.backend, reranker.max_batch_tokens = backend, max_batch_tokens
        return reranker

    def _encoder(self, lengths: PairLengths) -> PairEncoder:
        if lengths not in self._encoders:
            self._encoders[lengths] = PairEncoder(self.tokenizer, lengths)
        return self._encoders[lengths]

    def lengths_for(self, max_length: int | None) -> PairLengths:
        """The saved scoring budgets, with the whole pair capped at ``max_length`` (and the model's positions)."""
        if max_length is None:
            return self.lengths
        return PairLengths.for_model(
            self.lengths.query_max_len,
            self.lengths.passage_max_len,
            self.model.config,
            self.tokenizer,
            max_length,
        )

    def pipeline_stages(self, lengths: PairLengths) -> Stages:
        """Encode with ``lengths``, pad into arrays (page-locked on CUDA), run the torch model or ONNX graph."""
        encoder = self._encoder(lengths)
        cuda = self.device.type == "cuda"
        multiple = 8 if cuda and lengths.max_length % 8 == 0 else None  # never past the model's positions
        collate = PairCollator(self.tokenizer, encoder_input_names(self.tokenizer), multiple)

        def encode(chunk: Sequence[Pair]) -> list:
            return encoder.encode_encodings([q for q, _ in chunk], [p for _, p in chunk])

        if self.onnx is not None:
            return Stages(encode, collate, self.onnx, collate.padded_length)

        def to_tensors(encodings: list) -> dict[str, torch.Tensor]:
            return as_tensors(collate(encodings), pin=cuda)

        @torch.inference_mode()
        def forward(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.model.score({k: v.to(self.device, non_blocking=cuda) for k, v in inputs.items()})

        return Stages(encode, to_tensors, forward, collate.padded_length)

    def compute_score(
        self,
        pairs: Pair | Sequence[Pair],
        batch_size: int | None = None,
        max_length: int | None = None,
        normalize: bool = False,
        show_progress: bool | None = None,
        max_batch_tokens: int | None = None,
        long_passages: str | LongPassages | None = None,
        window: int | None = None,
        stride: int | None = None,
        return_windows: bool = False,
    ) -> float | list[float] | tuple:
        """One pair gives a float, a list (tuple, generator, (n, 2) array) of pairs a list in input order;
        ``normalize`` gives probabilities (the calibration where one was fitted, else a sigmoid);
        ``show_progress`` None shows a bar for more than 10 batches; ``max_batch_tokens`` caps a batch's padded
        tokens as well as its pairs (the reranker's own when None).

        ``long_passages``: "truncate" (cut at the passage budget), "maxp", "firstp" or "meanp" (the mean of the
        best ``top_k``): passages split into windows of ``window`` tokens every ``stride`` tokens (defaults:
        what the model keeps beside the query, half of it), every window of the call scored together
        (`rerankforge.inference.long_passages`); None: the model's saved mode. ``return_windows`` returns
        ``(scores, windows per passage)``."""
        pair_list, single = to_pairs(pairs)
        lengths = self.lengths_for(max_length)
        settings = self.passage_settings(long_passages, window, stride)

        def score(some: list, normalized: bool) -> list[float]:
            return self._score(some, lengths, batch_size, normalized, show_progress, max_batch_tokens)

        scores, counts = self._score_passages(pair_list, settings, lengths, score, normalize)
        return with_windows(scores, counts, single, return_windows)

    def passage_room(self, lengths: PairLengths, prompt: str | None = None):
        return self._encoder(lengths).passage_room

    def _score(
        self,
        pairs: Sequence[Pair],
        lengths: PairLengths,
        batch_size: int | None = None,
        normalize: bool = False,
        show_progress: bool | None = None,
        max_batch_tokens: int | None = None,
    ) -> list[float]:
        """The one scoring path (`run_pipeline`): chunks encoded with ``lengths``, scored longest first in
        batches of at most ``batch_size`` pairs and ``max_batch_tokens`` tokens; scores in input order."""
        budget = max_batch_tokens if max_batch_tokens is not None else self.max_batch_tokens
        check_token_budget(
            budget, lengths.max_length
        )  # here, not in a worker: the same ValueError as one device
        if self.pool is not None:  # several devices: each worker process scores a share
            return self.pool.score(
                pairs, show_progress, lengths=lengths, batch_size=batch_size or self.batch_size,
                normalize=normalize, max_batch_tokens=budget,
            )  # fmt: skip
        prefetch = self.prefetch if self.prefetch is not None else self.device.type == "cuda"
        scores = score_through_pipeline(pairs, self.pipeline_stages(lengths), batch_size or self.batch_size,
                                        budget, self.chunk_size, prefetch, show_progress)  # fmt: skip
        return probabilities(self.spec, scores) if normalize else scores


def checked_backend(backend: str | None, dtype: torch.dtype | None, device: str | torch.device | None) -> str:
    """The backend asked for (or the default), refused where it cannot run."""
    backend = backend or default_backend()
    if backend not in (AUTO, *BACKENDS):
        raise ValueError(f"backend must be one of {(AUTO, *BACKENDS)}, got {backend!r}")
    if backend == AUTO and dtype not in (None, torch.float32):
        backend = "torch"  # half precision: only torch runs it
    if backend not in ("torch", AUTO) and device is not None and torch.device(device).type != "cpu":
        raise ValueError(f"backend={backend!r} runs on the CPU; use backend='torch' for device={device!r}")
    return backend


def graph_backend(
    model: CrossEncoderModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str,
    backend: str,
    dtype: torch.dtype | None,
    device: str | torch.device | None,
) -> tuple[str, OnnxScorer | None]:
    """The backend that runs and its graph scorer (None: torch). The graphs are exports of the plain classifier,
    so a family whose model does more than its logit (a subclass's forward) runs in torch."""
    if type(model) is not CrossEncoderModel:
        if backend not in (AUTO, "torch"):
            raise ValueError(f"backend={backend!r} exports the plain classifier; {path} is a "
                             f"{model.spec.family!r} model: use backend='torch'")  # fmt: skip
        return "torch", None
    if backend == AUTO:
        where = torch.device(device) if device is not None else default_device()
        names = encoder_input_names(tokenizer)
        return choose_backend(model.backbone, tokenizer, path, names, model.spec.max_length, where)
    if backend == "torch":
        return backend, None
    if dtype not in (None, torch.float32):
        raise ValueError(f"backend={backend!r} exports the fp32 model; leave dtype unset")
    return backend, graph_scorer(model.backbone, tokenizer, path, backend)


def flag_reranker_lengths(
    max_length: int, query_max_length: int | None, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase
) -> PairLengths:
    """FlagReranker's budgets: query 3/4 of max_length, passage max_length, pair max_length."""
    query_max = query_max_length if query_max_length is not None else max_length * 3 // 4
    return PairLengths.for_model(query_max, max_length, model.config, tokenizer, max_length=max_length)


def plain_folder_spec(
    path: str, tokenizer: PreTrainedTokenizerBase, trust_remote_code: bool
) -> CrossEncoderSpec:
    """The stand-in spec of a folder rerankforge did not write: FlagReranker's budgets within its positions."""
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    lengths = PairLengths.for_model(
        DEFAULT_MAX_LENGTH * 3 // 4, DEFAULT_MAX_LENGTH, config, tokenizer, max_length=DEFAULT_MAX_LENGTH
    )
    return CrossEncoderSpec(
        query_max_len=lengths.query_max_len,
        passage_max_len=lengths.passage_max_len,
        max_length=lengths.max_length,
        base_model=path,
    )

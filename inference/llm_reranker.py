"""`LLMReranker`: score pairs with a decoder LLM's "Yes" logit: a thin wrapper over the trainer's model object."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from rerankforge.inference.batching import RanksCandidates, probabilities, with_windows
from rerankforge.inference.device_pool import (
    ConfigOnlyModel,
    DevicePool,
    Loader,
    factory_loader,
    one_device,
    several_devices,
)
from rerankforge.inference.long_passages import LongPassages
from rerankforge.inference.modeling.folder_checks import check_model_folder
from rerankforge.inference.modeling.llm import (
    LLMRerankerModel,
    ensure_pad_token,
    llm_scoring_fields,
    load_tokenizer,
)
from rerankforge.inference.modeling.llm_formats import (
    BGE,
    DEFAULTS,
    QWEN3,
    QWEN3_MAX_LENGTH,
    TemplateEncoder,
    check_format,
    looks_like_qwen3_reranker,
    prompt_encoder,
)
from rerankforge.inference.modeling.llm_inputs import DEFAULT_PROMPT, LLMPromptEncoder, pad_left, pad_token_id
from rerankforge.inference.modeling.lora import adapter_base_model, is_adapter_folder
from rerankforge.inference.modeling.sources import resolve_model_path
from rerankforge.inference.modeling.spec import LLMSpec, RerankerSpec
from rerankforge.inference.pairs import to_pairs
from rerankforge.inference.pipeline import Stages, padded_length, score_through_pipeline
from rerankforge.inference.reranker import Pair, default_device

logger = logging.getLogger(__name__)
FLAG_MAX_LENGTH = 512  # FlagLLMReranker's default for folders that rerankforge did not write


@dataclass(frozen=True)
class LLMLengths:
    """Token budgets: query, passage, and an optional cap on BOS + query + \\n + passage (prompt excluded)."""

    query_max_len: int
    passage_max_len: int
    pair_max_len: int | None = None


def flag_llm_lengths(max_length: int, query_max_length: int | None, separator_and_prompt: int) -> LLMLengths:
    """FlagLLMReranker's budgets: query 3/4 of max_length, passage max_length, and the pair capped at
    max_length plus the separator and prompt lengths (its ``encode_max_length``)."""
    query_max = query_max_length if query_max_length is not None else max_length * 3 // 4
    return LLMLengths(query_max, max_length, max_length + separator_and_prompt)


class LLMReranker(RanksCandidates):
    """A decoder-LLM reranker: ``compute_score`` for pairs, ``rank`` for one query's candidates.

    ``trained`` is False for a plain causal-LM folder, which the model scores with a stand-in spec (BGE's prompt,
    the "Yes" logit) and FlagLLMReranker's budgets. ``pool``: several devices, whose worker processes hold the
    weights and score (`DevicePool`); ``model`` is then a `ConfigOnlyModel` carrying the spec.
    """

    model_class: type[LLMRerankerModel] = LLMRerankerModel

    def __init__(
        self,
        model: LLMRerankerModel,
        tokenizer: PreTrainedTokenizerBase,
        lengths: LLMLengths | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        trained: bool = True,
        pool: DevicePool | None = None,
    ):
        self.trained = trained
        self.pool = pool
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.tokenizer = ensure_pad_token(tokenizer)
        self.lengths = lengths or LLMLengths(self.spec.query_max_len, self.spec.passage_max_len)
        self.batch_size = batch_size
        self._encoders: dict[LLMLengths, LLMPromptEncoder | TemplateEncoder] = {}

    @property
    def spec(self) -> LLMSpec:
        return self.model.spec

    @property
    def prompt(self) -> str:
        return self.spec.prompt or DEFAULT_PROMPT

    @property
    def yes_token_id(self) -> int:
        return self.spec.yes_token_id

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
        batch_size: int = 16,
        attn_implementation: str = "auto",
        adapter_path: str | None = None,
        backend: str = "torch",
        devices: str | Sequence[str] | None = None,
        worker_loader: tuple[Loader, dict[str, Any]] | None = None,
        input_format: str | None = None,
    ) -> LLMReranker:
        """Our adapter folders (base + adapter, merged on load), our merged models, and plain causal-LM folders:
        laid out as Qwen/Qwen3-Reranker-* (recognised by architecture and tokenizer: its chat layout, "yes"
        against "no", 8192 tokens) or else as BAAI/bge-reranker-v2-gemma (default prompt, "Yes" token,
        FlagLLMReranker's lengths). ``input_format`` ("bge", "qwen3" or "chat") names a plain folder's layout
        instead; our folders record theirs in rerankforge.json.

        ``adapter_path`` puts a separately saved adapter on ``name_or_path`` (FlagLLMReranker's ``peft_path``);
        ``backend`` is "torch" only (the graph backends run cross-encoders). ``devices``: two or more ("cuda:0", "cuda:1", ...) score with one worker process per device, each
        loading the weights (this process keeps only the tokenizer and spec); ``reranker.pool.close()`` stops
        them (so do garbage collection and exit). ``worker_loader``: ``(loader, kwargs)`` with which each worker
        loads instead of this class's ``from_pretrained`` with these arguments (the FlagEmbedding wrappers
        pass their own class, see `factory_loader`).
        """
        pool_devices, device = several_devices(devices), one_device(device, devices)
        path = resolve_model_path(name_or_path)
        spec_folder = adapter_path or path
        if backend != "torch":
            family = cls.model_class.spec_class.family_name
            raise ValueError(
                f"backend={backend!r} is for cross-encoders; {name_or_path} holds a {family!r} reranker"
            )
        spec = cls.checked_spec(spec_folder, base=path if adapter_path else None)
        pool = None
        if pool_devices:  # the workers load while this process reads the tokenizer
            loader, load_kwargs = worker_loader or (factory_loader, dict(
                factory=cls.from_pretrained, dtype=dtype, trust_remote_code=trust_remote_code,
                batch_size=batch_size, attn_implementation=attn_implementation, adapter_path=adapter_path,
                input_format=input_format,
            ))  # fmt: skip
            pool = DevicePool(path, pool_devices, loader, **load_kwargs)
        try:
            tokenizer = load_tokenizer(tokenizer_folder(path, spec_folder, spec), trust_remote_code)
            stand_in, lengths = cls.scoring_defaults(tokenizer, spec, spec_folder, path, input_format)
            if pool is not None:  # the spec is all this process needs: prompt, token ids, budgets, layers
                pool.wait_ready()
                model = ConfigOnlyModel(spec or stand_in, None)
                return cls(model, tokenizer, lengths, "cpu", batch_size, trained=spec is not None, pool=pool)
        except BaseException:
            if pool is not None:
                pool.close()
            raise
        model = cls.model_class.from_pretrained(
            path, dtype, trust_remote_code, attn_implementation, adapter_path=adapter_path, spec=stand_in
        )
        return cls(model, tokenizer, lengths, device=device, batch_size=batch_size, trained=spec is not None)

    @classmethod
    def checked_spec(cls, spec_folder: str, base: str | None) -> RerankerSpec | None:
        """The folder's spec once its files are checked (an adapter saved apart: its base is ``base``); it
        must be of this class's family."""
        family = cls.model_class.spec_class.family_name
        check_model_folder(
            spec_folder, family, cls.__name__, base=base
        )  # missing, damaged or mismatched files
        spec = RerankerSpec.load(spec_folder)
        if spec is not None and spec.family != family:
            raise ValueError(
                f"{spec_folder} holds a {spec.family!r} reranker; {cls.__name__} loads rerankforge {family!r} folders"
            )
        return spec

    @classmethod
    def scoring_defaults(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        spec: RerankerSpec | None,
        spec_folder: str,
        path: str,
        input_format: str | None,
    ) -> tuple[LLMSpec | None, LLMLengths | None]:
        """A plain folder's stand-in spec and FlagLLMReranker's lengths (bge), in the format asked or found;
        for our folders (None, None), after checking an asked format against the trained one."""
        if spec is not None:
            if input_format is not None and input_format != spec.input_format:
                raise ValueError(
                    f"{spec_folder} was trained in input_format {spec.input_format!r} (rerankforge.json), "
                    f"not {input_format!r}"
                )
            return None, None
        input_format = input_format or plain_input_format(path, tokenizer)
        stand_in = cls.plain_spec(tokenizer, path, input_format)
        if input_format != BGE:
            return stand_in, None
        prompt_length = separator_and_prompt_length(tokenizer, DEFAULT_PROMPT)
        return stand_in, flag_llm_lengths(FLAG_MAX_LENGTH, None, prompt_length)

    @classmethod
    def plain_spec(cls, tokenizer: PreTrainedTokenizerBase, path: str, input_format: str = BGE) -> LLMSpec:
        return plain_llm_spec(tokenizer, path, input_format)

    def encoder(self, lengths: LLMLengths) -> LLMPromptEncoder | TemplateEncoder:
        """The spec's input format with these budgets (one encoder per budget, kept)."""
        if lengths not in self._encoders:
            spec = self.spec
            self._encoders[lengths] = prompt_encoder(
                self.tokenizer, spec.input_format, self.prompt, lengths.query_max_len, lengths.passage_max_len,
                spec.max_length, pair_max_len=lengths.pair_max_len, yes_token=spec.yes_token,
                no_token=spec.no_token,
            )  # fmt: skip
        return self._encoders[lengths]

    def format_text(self, query: str, passage: str, prompt: str | None = None) -> str:
        """A pair as the one text this model reads (uncut): what a sequence-classification export is given."""
        return self.encoder(self.lengths).text(query, passage, prompt)

    def lengths_for(self, max_length: int | None) -> LLMLengths:
        """The trained budgets; ``max_length`` caps BOS + query + \\n + passage in the bge format (the prompt is
        never cut), the whole row in the chat formats."""
        if max_length is None:
            return self.lengths
        return LLMLengths(self.lengths.query_max_len, self.lengths.passage_max_len, max_length)

    def pipeline_stages(
        self,
        lengths: LLMLengths,
        prompt: str | None,
        score: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    ) -> Stages:
        """Encode with ``lengths`` and ``prompt``, pad on the left (page-locked on CUDA), then ``score`` the
        batch on the device (`forward_scores` unless given)."""
        score = score or self.forward_scores
        cuda = self.device.type == "cuda"
        multiple = 8 if cuda else None
        pad_id = pad_token_id(self.tokenizer)

        def collate(sequences: list[list[int]]) -> dict[str, torch.Tensor]:
            batch = pad_left(sequences, pad_id, multiple)
            return {k: v.pin_memory() for k, v in batch.items()} if cuda else batch

        @torch.inference_mode()
        def forward(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return score({k: v.to(self.device, non_blocking=cuda) for k, v in inputs.items()})

        return Stages(self.chunk_encoder(lengths, prompt), collate, forward, padded_length(multiple))

    def run_stages(
        self, pairs: Sequence[Pair], stages: Stages, batch_size: int | None, show_progress: bool | None
    ) -> list:
        """The scoring pipeline on this process's model (prefetching on CUDA unless ``prefetch`` says)."""
        prefetch = self.prefetch if self.prefetch is not None else self.device.type == "cuda"
        return score_through_pipeline(pairs, stages, batch_size or self.batch_size, self.max_batch_tokens,
                                      self.chunk_size, prefetch, show_progress)  # fmt: skip

    def forward_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[rows]`` float32 scores of a padded batch."""
        return self.model(**batch).float()

    def compute_score(
        self,
        pairs: Pair | Sequence[Pair],
        batch_size: int | None = None,
        max_length: int | None = None,
        normalize: bool = False,
        prompt: str | None = None,
        show_progress: bool | None = None,
        long_passages: str | LongPassages | None = None,
        window: int | None = None,
        stride: int | None = None,
        return_windows: bool = False,
    ) -> float | list[float] | tuple:
        """One pair gives a float, a list (tuple, generator, (n, 2) array) of pairs a list in input order;
        ``normalize`` gives probabilities (the calibration where one was fitted, else a sigmoid);
        ``show_progress`` None shows a bar for more than 10 batches. ``long_passages``, ``window``, ``stride``,
        ``return_windows``: as `Reranker.compute_score` (windows of the passage's tokens, scored together)."""
        pair_list, single = to_pairs(pairs)
        lengths = self.lengths_for(max_length)
        settings = self.passage_settings(long_passages, window, stride)

        def score(some: list, normalized: bool) -> list[float]:
            return self._score(some, lengths, batch_size, normalized, prompt, show_progress)

        scores, counts = self._score_passages(pair_list, settings, lengths, score, normalize, prompt)
        return with_windows(scores, counts, single, return_windows)

    def passage_room(self, lengths: LLMLengths, prompt: str | None = None):
        encoder = self.encoder(lengths)
        return lambda query: encoder.passage_room(query, prompt)

    def _score(
        self,
        pairs: Sequence[Pair],
        lengths: LLMLengths,
        batch_size: int | None = None,
        normalize: bool = False,
        prompt: str | None = None,
        show_progress: bool | None = None,
    ) -> list[float]:
        """The one scoring path: encode a chunk with ``lengths`` and ``prompt``, score it longest first (several
        devices: each worker process scores a share)."""
        if self.pool is not None:
            return self.pool.score(
                pairs, show_progress, lengths=lengths, batch_size=batch_size or self.batch_size,
                normalize=normalize, prompt=prompt, _settings={"max_batch_tokens": self.max_batch_tokens},
            )  # fmt: skip
        scores = self.run_stages(pairs, self.pipeline_stages(lengths, prompt), batch_size, show_progress)
        return probabilities(self.spec, scores) if normalize else scores

    def chunk_encoder(
        self, lengths: LLMLengths, prompt: str | None
    ) -> Callable[[Sequence[Pair]], list[list[int]]]:
        """Input ids for a chunk of pairs, with ``lengths`` and ``prompt``."""
        encoder = self.encoder(lengths)

        def encode(chunk: Sequence[Pair]) -> list[list[int]]:
            return encoder.encode([q for q, _ in chunk], [p for _, p in chunk], [prompt] * len(chunk))

        return encode


def separator_and_prompt_length(tokenizer: PreTrainedTokenizerBase, prompt: str) -> int:
    encoder = LLMPromptEncoder(tokenizer, 1, 1, prompt)
    return len(encoder.separator_ids) + len(encoder.prompt_ids(None))


def plain_llm_spec(tokenizer: PreTrainedTokenizerBase, base_model: str, input_format: str = BGE) -> LLMSpec:
    """The spec of a folder rerankforge did not write: BGE's prompt, "Yes" logit and FlagLLMReranker's lengths,
    or (qwen3, chat) the format's instruction, "yes" against "no", and Qwen3-Reranker's 8192-token rows."""
    check_format(input_format)
    defaults = DEFAULTS[input_format]
    scoring = llm_scoring_fields(tokenizer, defaults.prompt, defaults.score, defaults.yes_token,
                                 defaults.no_token, input_format)  # fmt: skip
    if input_format == BGE:
        lengths = dict(query_max_len=FLAG_MAX_LENGTH * 3 // 4, passage_max_len=FLAG_MAX_LENGTH,
                       max_length=FLAG_MAX_LENGTH)  # fmt: skip
    else:  # the whole row is capped; the body is cut from its end
        lengths = dict(query_max_len=QWEN3_MAX_LENGTH, passage_max_len=QWEN3_MAX_LENGTH,
                       max_length=QWEN3_MAX_LENGTH)  # fmt: skip
    return LLMSpec(base_model=base_model, **lengths, **scoring)


def plain_input_format(path: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """qwen3 for a folder laid out as Qwen3-Reranker, else bge (as FlagLLMReranker reads any causal LM)."""

    config_path = Path(path) / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if looks_like_qwen3_reranker(config, tokenizer):
            return QWEN3
    return BGE


def tokenizer_folder(path: str, spec_folder: str, spec: RerankerSpec | None) -> str:
    """Where the tokenizer is: beside the spec when saved there, else with the base model an adapter names."""
    if (Path(spec_folder) / "tokenizer_config.json").is_file():
        return spec_folder
    if is_adapter_folder(path):
        base = (spec.base_model if spec is not None else None) or adapter_base_model(path)
        if base is not None:
            return base
    return path

"""FlagEmbedding's class names and call signatures, so its users migrate by changing one import."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from rerankforge.inference.backend_choice import default_backend
from rerankforge.inference.device_pool import factory_loader, several_devices
from rerankforge.inference.layerwise_reranker import LayerwiseReranker
from rerankforge.inference.llm_reranker import FLAG_MAX_LENGTH as FLAG_LLM_MAX_LENGTH
from rerankforge.inference.llm_reranker import (
    LLMLengths,
    LLMReranker,
    flag_llm_lengths,
    separator_and_prompt_length,
)
from rerankforge.inference.modeling.families import get_family
from rerankforge.inference.modeling.folder_checks import folder_family
from rerankforge.inference.modeling.llm_inputs import LLMPromptEncoder
from rerankforge.inference.modeling.pair_encoding import PairLengths
from rerankforge.inference.modeling.sources import resolve_model_path
from rerankforge.inference.pairs import to_pairs
from rerankforge.inference.reranker import DEFAULT_MAX_LENGTH, Pair, Reranker, flag_reranker_lengths

logger = logging.getLogger(__name__)


def pick_device_and_dtype(
    devices: str | Sequence[str] | None, use_fp16: bool, use_bf16: bool
) -> tuple[torch.device, torch.dtype]:
    """FlagEmbedding's rules: half precision only on a GPU (fp16/bf16 fall back to fp32 on CPU).

    Of several devices, the first's: the wrappers score on several through a `DevicePool`, whose workers each
    pick their own device's dtype."""
    if isinstance(devices, str):
        devices = [devices]
    if devices:
        device = torch.device(devices[0])
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32
    if device.type == "cuda":
        dtype = torch.bfloat16 if use_bf16 else torch.float16 if use_fp16 else torch.float32
    elif use_fp16 or use_bf16:
        logger.info("half precision asked for on %s: running in float32", device)
    return device, dtype


def with_instruction(text: str, instruction: tuple[str | None, str]) -> str:
    prefix, template = instruction
    return template.format(prefix, text) if prefix is not None else text


def instructed_pairs(
    sentence_pairs: Pair | Sequence[Pair],
    query_instruction: tuple[str | None, str],
    passage_instruction: tuple[str | None, str],
) -> list[tuple[str, str]]:
    """FlagEmbedding's ``*_instruction_for_rerank`` / ``*_instruction_format`` applied to one pair or a list."""
    pairs, _ = to_pairs(sentence_pairs)
    if query_instruction[0] is None and passage_instruction[0] is None:
        return pairs
    return [
        (with_instruction(q, query_instruction), with_instruction(p, passage_instruction)) for q, p in pairs
    ]


def load_as_flag_reranker(
    model_name_or_path: str,
    use_fp16: bool,
    use_bf16: bool,
    trust_remote_code: bool,
    devices: str | Sequence[str] | None,
    batch_size: int,
    backend: str | None,
    max_batch_tokens: int | None,
) -> Reranker:
    """`Reranker.from_pretrained` with FlagReranker's choice of device and precision."""
    pool_devices = several_devices(devices)  # two or more: one scoring worker process per device
    # a pool's dtype is its GPUs' (half precision when asked); a pool of CPUs runs fp32, as one CPU does
    first = (
        next((d for d in pool_devices if torch.device(d).type == "cuda"), pool_devices[0])
        if pool_devices
        else devices
    )
    device, dtype = pick_device_and_dtype(first, use_fp16, use_bf16)
    backend = backend or default_backend()
    # auto: torch on a GPU, the fastest exact backend measured here on a CPU
    on_torch = backend in ("torch", "auto")
    return Reranker.from_pretrained(
        model_name_or_path,
        # onnx: the CPU unless told otherwise; several devices: the workers' (this process holds no weights)
        device=device if (on_torch or devices) and not pool_devices else None,
        dtype=dtype if on_torch else None,  # the graphs run fp32 (as FlagEmbedding does on a CPU)
        trust_remote_code=trust_remote_code,
        batch_size=batch_size,
        backend=backend,
        devices=pool_devices,
        max_batch_tokens=max_batch_tokens,
    )


class FlagReranker(Reranker):
    """``FlagEmbedding.FlagReranker`` with the same arguments and ``compute_score`` behaviour."""

    def __init__(
        self,
        model_name_or_path: str,
        use_fp16: bool = False,
        use_bf16: bool = False,
        query_instruction_for_rerank: str | None = None,
        query_instruction_format: str = "{}{}",
        passage_instruction_for_rerank: str | None = None,
        passage_instruction_format: str = "{}{}",
        trust_remote_code: bool = False,
        devices: str | Sequence[str] | None = None,
        batch_size: int = 128,
        query_max_length: int | None = None,
        max_length: int | None = None,
        normalize: bool = False,
        backend: str | None = None,
        max_batch_tokens: int | None = None,
        **unused: object,
    ):
        """``backend`` and ``max_batch_tokens`` are rerankforge's additions (see `Reranker.from_pretrained`:
        "auto" by default, "torch", "onnx", "openvino", "onnx-int8", "openvino-bf16")."""
        if unused:
            logger.warning("FlagReranker arguments not used by rerankforge: %s", ", ".join(sorted(unused)))
        loaded = load_as_flag_reranker(model_name_or_path, use_fp16, use_bf16, trust_remote_code, devices,
                                       batch_size, backend, max_batch_tokens)  # fmt: skip
        super().__init__(
            loaded.model,
            loaded.tokenizer,
            loaded.lengths,
            device=loaded.device,
            batch_size=batch_size,
            spec=loaded.spec,
            onnx=loaded.onnx,
            pool=loaded.pool,
        )
        self.backend, self.max_batch_tokens = loaded.backend, loaded.max_batch_tokens
        self.query_instruction = (query_instruction_for_rerank, query_instruction_format)
        self.passage_instruction = (passage_instruction_for_rerank, passage_instruction_format)
        self.query_max_length = query_max_length
        self.max_length = max_length
        self.normalize = normalize

    def flag_lengths(self, query_max_length: int | None, max_length: int | None) -> PairLengths:
        """Our checkpoints keep their saved scoring budgets unless lengths are given; other folders get
        FlagReranker's (query 3/4 of max_length, passage and pair max_length, max_length 512)."""
        query_max_length = query_max_length if query_max_length is not None else self.query_max_length
        max_length = max_length if max_length is not None else self.max_length
        if self.spec is not None and query_max_length is None and max_length is None:
            return self.lengths
        return flag_reranker_lengths(
            max_length or DEFAULT_MAX_LENGTH, query_max_length, self.model, self.tokenizer
        )

    def compute_score(
        self,
        sentence_pairs: Pair | Sequence[Pair],
        batch_size: int | None = None,
        query_max_length: int | None = None,
        max_length: int | None = None,
        normalize: bool | None = None,
        **unused: object,
    ) -> float | list[float]:
        """As FlagEmbedding: a float when there is exactly one score, else a list in input order."""
        pairs = instructed_pairs(sentence_pairs, self.query_instruction, self.passage_instruction)
        lengths = self.flag_lengths(query_max_length, max_length)
        scores = self._score(pairs, lengths, batch_size, self.normalize if normalize is None else normalize)
        return scores[0] if len(scores) == 1 else scores

    def _raw_scores(
        self, pairs: Sequence[Pair], batch_size: int | None = None, show_progress: bool | None = None
    ) -> list[float]:
        """`predict`'s and `rank`'s raw scores: ``compute_score``'s (instructions, lengths), never normalized."""
        pairs = instructed_pairs(pairs, self.query_instruction, self.passage_instruction)
        lengths = self.flag_lengths(None, None)
        return self._score(pairs, lengths, batch_size, show_progress=show_progress)


class FlagLLMReranker(LLMReranker):
    """``FlagEmbedding.FlagLLMReranker`` with the same arguments, input ids and ``compute_score`` behaviour.

    Folders rerankforge did not write get FlagLLMReranker's lengths (max_length 512, query 3/4 of it); our
    checkpoints keep their saved scoring budgets unless lengths are given.
    """

    def __init__(
        self,
        model_name_or_path: str,
        peft_path: str | None = None,
        use_fp16: bool = False,
        use_bf16: bool = False,
        query_instruction_for_rerank: str = "A: ",
        query_instruction_format: str = "{}{}",
        passage_instruction_for_rerank: str = "B: ",
        passage_instruction_format: str = "{}{}",
        trust_remote_code: bool = False,
        devices: str | Sequence[str] | None = None,
        prompt: str | None = None,
        batch_size: int = 128,
        query_max_length: int | None = None,
        max_length: int | None = None,
        normalize: bool = False,
        **unused: object,
    ):
        if unused:
            logger.warning("FlagLLMReranker arguments not used by rerankforge: %s", ", ".join(sorted(unused)))
        pool_devices = several_devices(devices)  # two or more: one scoring worker process per device
        device, dtype = pick_device_and_dtype(devices, use_fp16, use_bf16)
        worker = None
        if pool_devices:  # each worker is a FlagLLMReranker on its device: its input ids, its dtype
            worker = (factory_loader, dict(
                factory=FlagLLMReranker, device_keyword="devices", peft_path=peft_path, use_fp16=use_fp16,
                use_bf16=use_bf16, trust_remote_code=trust_remote_code, batch_size=batch_size,
            ))  # fmt: skip
        loaded = LLMReranker.from_pretrained(
            model_name_or_path,
            device=None if pool_devices else device,  # several devices: the workers' (no weights here)
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            adapter_path=peft_path,
            devices=pool_devices,
            worker_loader=worker,
        )
        super().__init__(
            loaded.model, loaded.tokenizer, loaded.lengths, loaded.device, batch_size, trained=loaded.trained,
            pool=loaded.pool,
        )  # fmt: skip
        self.query_instruction = (query_instruction_for_rerank, query_instruction_format)
        self.passage_instruction = (passage_instruction_for_rerank, passage_instruction_format)
        self.default_prompt = prompt
        self.query_max_length = query_max_length
        self.max_length = max_length
        self.normalize = normalize

    def encoder(self, lengths: LLMLengths) -> LLMPromptEncoder:
        """As the base encoder, with the instructions applied to the texts instead of fixed prefixes."""
        if lengths not in self._encoders:
            self._encoders[lengths] = LLMPromptEncoder(
                self.tokenizer,
                lengths.query_max_len,
                lengths.passage_max_len,
                self.prompt,
                pair_max_len=lengths.pair_max_len,
                query_prefix="",
                passage_prefix="",
            )
        return self._encoders[lengths]

    def flag_lengths(self, query_max_length: int | None, max_length: int | None, prompt: str) -> LLMLengths:
        query_max_length = query_max_length if query_max_length is not None else self.query_max_length
        max_length = max_length if max_length is not None else self.max_length
        if self.trained and query_max_length is None and max_length is None:
            return self.lengths
        extra = separator_and_prompt_length(self.tokenizer, prompt)
        return flag_llm_lengths(max_length or FLAG_LLM_MAX_LENGTH, query_max_length, extra)

    def compute_score(
        self,
        sentence_pairs: Pair | Sequence[Pair],
        batch_size: int | None = None,
        query_max_length: int | None = None,
        max_length: int | None = None,
        prompt: str | None = None,
        normalize: bool | None = None,
        **unused: object,
    ) -> float | list[float]:
        """As FlagEmbedding: a float when there is exactly one score, else a list in input order."""
        pairs = instructed_pairs(sentence_pairs, self.query_instruction, self.passage_instruction)
        prompt = prompt or self.default_prompt
        lengths = self.flag_lengths(query_max_length, max_length, prompt or self.prompt)
        normalize = self.normalize if normalize is None else normalize
        scores = self._score(pairs, lengths, batch_size, normalize, prompt)
        return scores[0] if len(scores) == 1 else scores

    def _raw_scores(
        self, pairs: Sequence[Pair], batch_size: int | None = None, show_progress: bool | None = None
    ) -> list[float]:
        """`predict`'s and `rank`'s raw scores: ``compute_score``'s (instructions, prompt, lengths), never
        normalized."""
        pairs = instructed_pairs(pairs, self.query_instruction, self.passage_instruction)
        prompt = self.default_prompt
        lengths = self.flag_lengths(None, None, prompt or self.prompt)
        return self._score(pairs, lengths, batch_size, False, prompt, show_progress)


class LayerWiseFlagLLMReranker(LayerwiseReranker):
    """``FlagEmbedding.LayerWiseFlagLLMReranker``'s arguments and ``compute_score(..., cutoff_layers=[...])``,
    for layerwise checkpoints that rerankforge trained."""

    def __init__(
        self,
        model_name_or_path: str,
        use_fp16: bool = False,
        use_bf16: bool = False,
        trust_remote_code: bool = False,
        devices: str | Sequence[str] | None = None,
        cutoff_layers: Sequence[int] | None = None,
        prompt: str | None = None,
        batch_size: int = 128,
        max_length: int | None = None,
        normalize: bool = False,
        **unused: object,
    ):
        if unused:
            logger.warning(
                "LayerWiseFlagLLMReranker arguments not used by rerankforge: %s", ", ".join(sorted(unused))
            )
        pool_devices = several_devices(devices)  # two or more: one scoring worker process per device
        device, dtype = pick_device_and_dtype(devices, use_fp16, use_bf16)
        worker = None
        if pool_devices:  # each worker is a LayerWiseFlagLLMReranker on its device, in its dtype
            worker = (factory_loader, dict(
                factory=LayerWiseFlagLLMReranker, device_keyword="devices", use_fp16=use_fp16,
                use_bf16=use_bf16, trust_remote_code=trust_remote_code, batch_size=batch_size,
            ))  # fmt: skip
        loaded = LayerwiseReranker.from_pretrained(
            model_name_or_path, device=None if pool_devices else device, dtype=dtype,
            trust_remote_code=trust_remote_code, devices=pool_devices, worker_loader=worker,
        )  # fmt: skip
        super().__init__(
            loaded.model, loaded.tokenizer, device=loaded.device, batch_size=batch_size, pool=loaded.pool
        )
        self.cutoff_layers = cutoff_layers
        self.default_prompt = prompt
        self.max_length = max_length
        self.normalize = normalize

    def compute_score(
        self,
        sentence_pairs: Pair | Sequence[Pair],
        batch_size: int | None = None,
        max_length: int | None = None,
        cutoff_layers: Sequence[int] | None = None,
        prompt: str | None = None,
        normalize: bool | None = None,
        **unused: object,
    ):
        """As FlagEmbedding: a ``max_length`` gives its budgets (query 3/4 of it, passage max_length, the pair
        max_length plus separator and prompt); without one, the trained budgets."""
        layers = self.resolve_layers(cutoff_layers if cutoff_layers is not None else self.cutoff_layers)
        pairs, single = to_pairs(sentence_pairs)
        prompt = prompt or self.default_prompt
        lengths = self.flag_lengths(max_length, prompt)
        normalize = self.normalize if normalize is None else normalize
        per_layer = self._score_layers(pairs, lengths, layers, batch_size, normalize, prompt)
        if single:
            per_layer = [scores[0] for scores in per_layer]
        return per_layer[0] if len(layers) == 1 else per_layer

    def flag_lengths(self, max_length: int | None, prompt: str | None) -> LLMLengths:
        """The trained budgets, or FlagEmbedding's for a ``max_length`` (this call's, else the constructor's)."""
        max_length = max_length if max_length is not None else self.max_length
        if max_length is None:
            return self.lengths
        return flag_llm_lengths(
            max_length, None, separator_and_prompt_length(self.tokenizer, prompt or self.prompt)
        )

    def _raw_scores(
        self, pairs: Sequence[Pair], batch_size: int | None = None, show_progress: bool | None = None
    ) -> list[float]:
        """`predict`'s and `rank`'s raw scores: the last layer's, with ``compute_score``'s prompt and lengths."""
        prompt = self.default_prompt
        lengths = self.flag_lengths(None, prompt)
        return self._score(pairs, lengths, batch_size, False, prompt, show_progress)


# FlagEmbedding's ``model_class`` values (its RerankerModelClass) -> the family whose wrapper they name
FLAG_MODEL_CLASSES = {
    "encoder-only-base": "cross_encoder",
    "decoder-only-base": "llm",
    "decoder-only-layerwise": "layerwise",
}
# FlagEmbedding's table of Hub names (by the last part of the name): what a name that is not a local folder loads as
FLAG_HUB_NAMES = {
    "bge-reranker-base": "cross_encoder",
    "bge-reranker-large": "cross_encoder",
    "bge-reranker-v2-m3": "cross_encoder",
    "bge-reranker-v2-gemma": "llm",
    "bge-reranker-v2-minicpm-layerwise": "layerwise",
}


def flag_classes() -> dict[str, type]:
    """Each family's FlagEmbedding-style wrapper."""
    return {
        "cross_encoder": FlagReranker,
        "llm": FlagLLMReranker,
        "layerwise": LayerWiseFlagLLMReranker,
    }


def flag_family(name_or_path: str, model_class: str | None) -> str:
    """The family ``FlagAutoReranker`` loads: ``model_class``'s when given, else the folder's (as `load_reranker`
    picks it: rerankforge.json, else "llm" for a causal LM, else "cross_encoder"); a Hub name that is not a local
    folder goes by FlagEmbedding's table of names, else loads as a cross-encoder."""
    if model_class is not None:
        value = getattr(model_class, "value", model_class)  # FlagEmbedding's enum or its string
        if value not in FLAG_MODEL_CLASSES:
            raise ValueError(
                f"model_class {value!r} is not one rerankforge loads; use one of {sorted(FLAG_MODEL_CLASSES)}"
            )
        return FLAG_MODEL_CLASSES[value]
    path = resolve_model_path(name_or_path)
    family = folder_family(path)
    if family is not None:
        return get_family(family).name  # a family rerankforge does not know is refused by name
    if not Path(path).is_dir():
        name = Path(name_or_path.rstrip("/")).name
        if name.startswith("checkpoint-"):  # FlagEmbedding's rule: a checkpoint goes by its run's name
            name = Path(name_or_path.rstrip("/")).parent.name
        return FLAG_HUB_NAMES.get(name, "cross_encoder")
    return "cross_encoder"


class FlagAutoReranker:
    """``FlagEmbedding.FlagAutoReranker``: ``from_finetuned`` returns the wrapper of the folder's family."""

    def __init__(self):
        raise OSError(
            "FlagAutoReranker is designed to be instantiated using the "
            "`FlagAutoReranker.from_finetuned(model_name_or_path)` method."
        )

    @classmethod
    def from_finetuned(
        cls,
        model_name_or_path: str,
        model_class: str | None = None,
        use_fp16: bool = False,
        trust_remote_code: bool | None = None,
        **kwargs: object,
    ) -> FlagReranker | FlagLLMReranker | LayerWiseFlagLLMReranker:
        """`FlagReranker`, `FlagLLMReranker` or `LayerWiseFlagLLMReranker`, by the folder's family (see
        `flag_family`), or by ``model_class`` ("encoder-only-base", "decoder-only-base",
        "decoder-only-layerwise"); the other arguments go to that class."""
        family = flag_family(model_name_or_path, model_class)
        wrappers = flag_classes()
        if family not in wrappers:
            raise ValueError(
                f"{model_name_or_path} holds a {family!r} reranker, which has no FlagEmbedding-style class; "
                "load it with rerankforge.inference.load_reranker"
            )
        return wrappers[family](
            model_name_or_path, use_fp16=use_fp16, trust_remote_code=bool(trust_remote_code), **kwargs
        )

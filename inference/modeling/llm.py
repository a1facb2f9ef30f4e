"""LLM reranker: a causal LM scored by the logit of "Yes" at the last position (or its log-odds against "No").

The token ids are resolved once from the tokenizer, checked to be single tokens, and stored in
`rerankforge.json`, so training and inference read the same vocabulary row. Scores are float32 whatever
precision the model runs in.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import is_flash_attn_2_available

from rerankforge.inference.modeling.activation_checkpointing import checkpointing_on
from rerankforge.inference.modeling.base import RerankerModel, quiet_about
from rerankforge.inference.modeling.llm_formats import fixed_length, prompt_encoder
from rerankforge.inference.modeling.llm_inputs import DEFAULT_PROMPT
from rerankforge.inference.modeling.lora import (
    adapter_base_model,
    add_lora,
    is_adapter_folder,
    load_adapter,
    require_peft,
)
from rerankforge.inference.modeling.pair_encoding import PairLengths
from rerankforge.inference.modeling.precision import DTYPES
from rerankforge.inference.modeling.sources import resolve_model_path
from rerankforge.inference.modeling.spec import LLMSpec, RerankerSpec
from rerankforge.inference.modeling.training_options import LLMTrainingOptions

SCORE_MODES = ("yes", "yes_minus_no")


def single_token_id(tokenizer: PreTrainedTokenizerBase, word: str) -> int:
    """The id of ``word`` as one token, or a clear error naming what the tokenizer made of it."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(
            f"{word!r} is {len(ids)} tokens for this tokenizer ({pieces}); the score needs a single token: "
            "pick another answer word or another score mode"
        )
    return ids[0]


def score_last_token(
    model: PreTrainedModel,
    batch: dict[str, torch.Tensor],
    yes_token_id: int,
    no_token_id: int | None = None,
    mode: str = "yes",
) -> torch.Tensor:
    """One float32 score per left-padded row: the "Yes" logit at the last position (minus "No"'s)."""
    if mode not in SCORE_MODES:
        raise ValueError(f"unknown score mode {mode!r}; known: {', '.join(SCORE_MODES)}")
    logits = (
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=1)
        .logits[:, -1, :]
        .float()
    )
    score = logits[:, yes_token_id]
    if mode == "yes_minus_no":
        if no_token_id is None:
            raise ValueError("score mode yes_minus_no needs the 'No' token id")
        score = score - logits[:, no_token_id]
    return score


# "auto": transformers' own choice, sdpa where the architecture supports it (Gemma2 falls back to eager)
ATTENTION_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3")


def llm_scoring_fields(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str = DEFAULT_PROMPT,
    score: str = "yes",
    yes_token: str = "Yes",
    no_token: str = "No",
    input_format: str = "bge",
) -> dict[str, Any]:
    """The `LLMSpec` fields of a scoring setup: the input format, prompt, score mode and resolved token ids."""
    if score not in SCORE_MODES:
        raise ValueError(f"unknown score mode {score!r}; known: {', '.join(SCORE_MODES)}")
    if input_format != "bge":
        prompt_encoder(tokenizer, input_format, prompt, 1, 1, 10**9)  # a chat template that is missing, now
    return {
        "input_format": input_format,
        "prompt": prompt,
        "score": score,
        "yes_token": yes_token,
        "yes_token_id": single_token_id(tokenizer, yes_token),
        "no_token": no_token,
        "no_token_id": single_token_id(tokenizer, no_token) if score == "yes_minus_no" else None,
    }


def check_attention(attn_implementation: str) -> str | None:
    """The attention kernel, or a clear error when a flash-attention package is asked for but not installed."""
    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation {attn_implementation!r} is not one of {', '.join(ATTENTION_IMPLEMENTATIONS)}"
        )
    if attn_implementation == "flash_attention_2" and not is_flash_attn_2_available():
        raise ValueError(
            "attn_implementation flash_attention_2 needs the flash-attn package and a CUDA GPU; use auto or sdpa"
        )
    return None if attn_implementation == "auto" else attn_implementation


def load_causal_lm(
    name_or_path: str,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str = "auto",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A decoder LLM from safetensors only, in ``dtype`` (fp32 unless asked), with the chosen attention."""

    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    return AutoModelForCausalLM.from_pretrained(
        resolve_model_path(name_or_path),
        dtype=dtype if dtype is not None else torch.float32,
        attn_implementation=check_attention(attn_implementation),
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
    )


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Decoder tokenizers often have no pad token; padding is masked out, so EOS (or UNK) serves."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A decoder's tokenizer with a pad token (padding is masked; EOS serves)."""
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model_path(name_or_path), trust_remote_code=trust_remote_code
    )
    return ensure_pad_token(tokenizer)


class LLMRerankerModel(RerankerModel):
    """A causal LM whose score is the "Yes" logit at the last position (``score: yes_minus_no``: minus "No"'s).

    Its "heads" are rows of the LM head, named by the token ids in its `LLMSpec`; with LoRA, peft wraps this
    object and the adapter's keys are those of the bare causal LM.
    """

    spec_class = LLMSpec
    spec: LLMSpec

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[rows]`` float32 scores of left-padded rows."""
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        return score_last_token(
            self.backbone, batch, self.spec.yes_token_id, self.spec.no_token_id, self.spec.score
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str = "auto",
        adapter_path: str | Path | None = None,
        spec: RerankerSpec | None = None,
        **kwargs: Any,
    ) -> LLMRerankerModel:
        """For scoring: our full folders; our adapter folders (on the base model their spec names, merged); any
        causal LM with a stand-in ``spec``; ``adapter_path``: an adapter saved apart, put on ``name_or_path``."""

        path = resolve_model_path(str(name_or_path))
        spec_folder = str(adapter_path or path)
        spec = RerankerSpec.load(spec_folder) or spec
        if spec is None:
            raise ValueError(f"{spec_folder}: no rerankforge.json, and no stand-in spec was given")
        if type(spec) is not cls.spec_class:
            raise ValueError(
                f"{spec_folder} holds a {spec.family!r} reranker; load it with that family's class"
            )
        adapter = adapter_path or (path if is_adapter_folder(path) else None)
        if adapter is not None:  # before the base model's weights load, not after
            require_peft(f"loading the adapter in {adapter}")
        base = path
        if adapter is not None and adapter_path is None:
            base = spec.base_model or adapter_base_model(adapter)
            if base is None:
                raise ValueError(f"{adapter}: the adapter names no base model")
        with quiet_about(cls.head_prefix if adapter is None else None):  # heads among a full folder's weights
            backbone = load_causal_lm(base, dtype, attn_implementation, trust_remote_code)
        model = cls(backbone, spec)
        if adapter is None:
            model.load_heads(path)
            return model
        model.load_heads(adapter, legacy_only=True)  # heads saved beside a version-1 adapter
        merged = load_adapter(model, adapter, trainable=False).merge_and_unload()
        merged.spec = dataclasses.replace(spec, adapter=False)
        return merged

    def load_heads(self, folder: str | Path, legacy_only: bool = False) -> None:
        """Heads saved with the weights (none for this family)."""

    def freeze_fixed_parameters(self, wrapped: nn.Module) -> None:
        """Parameters that must not train, after peft made its trainable copies (none for this family)."""

    @classmethod
    def load_tokenizer(cls, config: LLMTrainingOptions) -> PreTrainedTokenizerBase:
        return load_tokenizer(config.tokenizer_name or config.model_name_or_path, config.trust_remote_code)

    @classmethod
    def for_training(cls, config: LLMTrainingOptions, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
        """The base LLM in the family model, with fresh adapters, a saved adapter to continue, or (no LoRA)
        every weight trainable."""
        backbone = load_causal_lm(
            config.model_name_or_path,
            config.torch_dtype,
            config.attn_implementation,
            config.trust_remote_code,
        )
        backbone.config.use_cache = False  # no generation in training; the cache only costs memory
        model = cls.for_training_from(backbone, cls.training_spec_fields(config, tokenizer), config)
        return prepare_for_training(model, config)

    @staticmethod
    def training_spec_fields(
        config: LLMTrainingOptions, tokenizer: PreTrainedTokenizerBase
    ) -> dict[str, Any]:
        scoring = llm_scoring_fields(
            tokenizer, config.prompt, config.score, config.yes_token, config.no_token, config.input_format
        )
        # the chat layouts cap whole rows: the budgets plus what the format adds around them
        frame = fixed_length(tokenizer, config.input_format, config.prompt, config.yes_token, config.no_token)
        return dict(
            query_max_len=config.query_max_len,
            passage_max_len=config.passage_max_len,
            max_length=config.query_max_len + config.passage_max_len + frame,
            base_model=config.model_name_or_path,
            adapter=config.use_lora,
            **scoring,
        )

    @classmethod
    def for_training_from(
        cls, backbone: PreTrainedModel, spec_fields: dict[str, Any], config: LLMTrainingOptions
    ) -> LLMRerankerModel:
        return cls(backbone, LLMSpec(**spec_fields))

    def training_lengths(self, config: LLMTrainingOptions, tokenizer: PreTrainedTokenizerBase) -> PairLengths:
        return PairLengths(config.query_max_len, config.passage_max_len, self.spec.max_length)


def prepare_for_training(model: LLMRerankerModel, config: LLMTrainingOptions) -> nn.Module:
    """LoRA as the config asks: fresh adapters, or a saved adapter (and its heads) to continue; none: as is."""

    if not config.use_lora:
        model.freeze_fixed_parameters(model)
        return model
    if config.adapter_name_or_path:
        model.load_heads(config.adapter_name_or_path, legacy_only=True)  # a version-1 adapter's heads file
        wrapped = load_adapter(model, config.adapter_name_or_path, trainable=True)
    else:
        wrapped = add_lora(
            model,
            config.lora_rank,
            config.lora_alpha,
            config.lora_dropout,
            config.lora_target_modules,
            config.modules_to_save,
        )
    model.freeze_fixed_parameters(wrapped)
    if checkpointing_on(config):
        model.enable_input_require_grads()  # so checkpointed blocks see a grad-requiring input
    return wrapped

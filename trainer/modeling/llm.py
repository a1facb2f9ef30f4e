"""LLM reranker scoring: the logit of "Yes" at the last position (or its log-odds against "No").

The token ids are resolved once from the tokenizer, checked to be single tokens, and stored in
`rerankforge.json`, so training and inference read the same vocabulary row. Scores are float32 whatever
precision the model runs in.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# "auto": transformers' own choice, sdpa where the architecture supports it (Gemma2 falls back to eager)
ATTENTION_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3")


def llm_scoring_fields(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    score: str = "yes",
    yes_token: str = "Yes",
    no_token: str = "No",
) -> dict[str, object]:
    """What `rerankforge.json` stores for this family: the prompt, the score mode and the resolved token ids."""
    if score not in SCORE_MODES:
        raise ValueError(f"unknown score mode {score!r}; known: {', '.join(SCORE_MODES)}")
    fields: dict[str, object] = {
        "prompt": prompt,
        "score": score,
        "yes_token": yes_token,
        "yes_token_id": single_token_id(tokenizer, yes_token),
        "no_token": no_token,
        "no_token_id": single_token_id(tokenizer, no_token) if score == "yes_minus_no" else None,
    }
    return fields


def check_attention(attn_implementation: str) -> str | None:
    """The attention kernel, or a clear error when a flash-attention package is asked for but not installed."""
    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation {attn_implementation!r} is not one of {', '.join(ATTENTION_IMPLEMENTATIONS)}"
        )
    if attn_implementation == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
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
    from transformers import AutoModelForCausalLM

    from rerankforge.trainer.modeling.sources import resolve_model_path

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

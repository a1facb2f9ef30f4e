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

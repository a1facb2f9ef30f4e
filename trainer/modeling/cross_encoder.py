"""Cross-encoder scoring: a sequence-classification model with one logit per pair."""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from rerankforge.trainer.modeling.sources import resolve_model_path

MODEL_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def load_cross_encoder(
    name_or_path: str, dtype: torch.dtype | str | None = None, trust_remote_code: bool = False
) -> PreTrainedModel:
    """Load (or start, for a bare encoder) a one-logit sequence classifier from safetensors only."""
    return AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(name_or_path),
        num_labels=1,
        dtype=dtype if dtype is not None else torch.float32,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
    )


def score_pairs(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One float32 relevance score per pair: the model's single logit."""
    inputs = {name: batch[name] for name in MODEL_INPUT_NAMES if name in batch}
    return model(**inputs).logits.view(-1).float()


def score_pairs_by_length(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], chunks: int, multiple: int = 8
) -> torch.Tensor:
    """`score_pairs` on ``chunks`` length-sorted slices of the batch, each cut to its own longest row.

    Why: a training batch (groups x group size pairs) is padded to its longest pair, and SQuAD-like passages
    vary a lot in length, so a third or more of the tokens the encoder runs on can be padding. Each pair's
    score is computed exactly as in one forward (an encoder's rows do not see each other; padding is masked),
    only with less padding; the scores come back in the batch's order and gradients flow through all slices.
    Right-padded batches only (cross-encoder collators pad on the right); others are scored in one forward.
    """
    mask = batch["attention_mask"]
    if chunks <= 1 or mask.shape[0] < 2 or not bool(mask[:, 0].all()):
        return score_pairs(model, batch)
    lengths = mask.sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    parts = []
    for rows in order.tensor_split(min(chunks, len(order))):
        width = int(lengths[rows].max())
        width = min(mask.shape[1], -(-width // multiple) * multiple)  # rounded up, as the collator pads
        parts.append(score_pairs(model, {k: batch[k][rows, :width] for k in MODEL_INPUT_NAMES if k in batch}))
    return torch.cat(parts)[torch.argsort(order)]

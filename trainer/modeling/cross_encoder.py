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

"""Padding pair encodings straight into arrays: the host-side step that `tokenizer.pad` did per pair in Python.

Why: on a GPU the scoring loop is bound by the host (tokenize, pad, copy), not the model. `tokenizer.pad` builds
a Python dict per pair and converts lists one by one; filling a preallocated numpy array row by row is about
ten times faster, and the attention mask comes from the lengths alone. The arrays are the ones `tokenizer.pad`
gives (tested): the same ids, type ids and mask, padded on the tokenizer's side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tokenizers import Encoding
from transformers import PreTrainedTokenizerBase

Arrays = dict[str, np.ndarray]


class PairCollator:
    """Pads a batch of pair encodings into the model's input arrays (int64), rounded up to ``pad_multiple``."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, input_names: Sequence[str], pad_multiple: int | None
    ):
        if tokenizer.pad_token_id is None:  # as tokenizer.pad refuses: a made-up pad id could be scored
            raise ValueError(
                f"{type(tokenizer).__name__} has no pad token; set tokenizer.pad_token to batch pairs"
            )
        self.pad_id = tokenizer.pad_token_id
        self.pad_type_id = getattr(tokenizer, "pad_token_type_id", 0) or 0
        self.left = tokenizer.padding_side == "left"
        self.names = tuple(input_names)
        self.pad_multiple = pad_multiple

    def padded_length(self, longest: int) -> int:
        multiple = self.pad_multiple
        return -(-longest // multiple) * multiple if multiple else longest

    def __call__(self, encodings: Sequence[Encoding]) -> Arrays:
        lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
        width = self.padded_length(int(lengths.max()))
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        types = np.full_like(ids, self.pad_type_id) if "token_type_ids" in self.names else None
        for row, encoding in enumerate(encodings):
            span = slice(width - len(encoding), width) if self.left else slice(0, len(encoding))
            ids[row, span] = encoding.ids
            if types is not None:
                types[row, span] = encoding.type_ids
        positions = np.arange(width)
        mask = positions >= width - lengths[:, None] if self.left else positions < lengths[:, None]
        arrays = {"input_ids": ids, "attention_mask": mask.astype(np.int64), "token_type_ids": types}
        return {name: arrays[name] for name in self.names}


def as_tensors(arrays: Arrays, pin: bool) -> dict[str, torch.Tensor]:
    """Zero-copy tensors over the arrays; page-locked (``pin``) so the copy to a GPU can run asynchronously."""
    tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
    return {name: tensor.pin_memory() for name, tensor in tensors.items()} if pin else tensors


def rows(batch: dict, start: int, stop: int) -> dict:
    """Rows ``start:stop`` of a padded batch (arrays or tensors), with columns that are padding in all of them
    cut off (right padding), so a split batch does not carry the longer rows' width."""
    part = {name: value[start:stop] for name, value in batch.items()}
    mask = part["attention_mask"]
    width = int(mask.sum(1).max()) if mask.shape[0] else 0
    if width and bool(mask[:, -1].sum() == 0) and bool(mask[:, 0].all()):  # right-padded: trim the tail
        part = {name: value[:, :width] for name, value in part.items()}
    return part

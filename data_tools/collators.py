"""Collators: a list of training groups in, the tensors a family's scorer needs out (one dataclass each)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from rerankforge.data_tools.grouping import TrainGroup
from rerankforge.data_tools.pair_encoding import PairEncoder, PairLengths


@dataclass
class CrossEncoderCollator:
    """Flattens groups into ``groups * group_size`` pairs, padded per batch to a multiple of 8.

    The batch carries ``group_size`` so the loss reshapes scores from the batch it receives, never from a
    configured batch size; a short last batch just has fewer groups.
    """

    tokenizer: PreTrainedTokenizerBase
    lengths: PairLengths
    pad_to_multiple_of: int | None = 8
    _encoder: PairEncoder | None = field(default=None, init=False, repr=False)

    @property
    def encoder(self) -> PairEncoder:
        if self._encoder is None:
            self._encoder = PairEncoder(self.tokenizer, self.lengths)
        return self._encoder

    def __call__(self, groups: list[TrainGroup]) -> dict[str, Any]:
        group_size = len(groups[0].passages)
        if any(len(g.passages) != group_size for g in groups):
            raise ValueError("all groups in a batch must have the same size")
        queries = [g.query for g in groups for _ in g.passages]
        passages = [p for g in groups for p in g.passages]
        features = self.encoder.encode(queries, passages)
        multiple = self.pad_to_multiple_of
        if multiple and self.lengths.max_length % multiple:  # rounding up could pass the model's positions
            multiple = None
        batch: dict[str, Any] = dict(
            self.tokenizer.pad(features, pad_to_multiple_of=multiple, return_tensors="pt")
        )
        batch["group_size"] = group_size
        if all(g.teacher_scores is not None for g in groups):
            batch["teacher_scores"] = torch.tensor([g.teacher_scores for g in groups], dtype=torch.float32)
        if groups[0].index is not None:
            batch["pair_index"] = torch.tensor([g.index for g in groups], dtype=torch.long)
        return batch

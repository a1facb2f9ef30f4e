"""Collators: a list of training groups in, the tensors a family's scorer needs out (one dataclass each)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from rerankforge.data_tools.grouping import TrainGroup
from rerankforge.inference.modeling.llm_formats import TemplateEncoder, prompt_encoder
from rerankforge.inference.modeling.llm_inputs import LLMPromptEncoder
from rerankforge.inference.modeling.pair_encoding import PairEncoder, PairLengths


def group_size_of(groups: list[TrainGroup]) -> int:
    group_size = len(groups[0].passages)
    if any(len(g.passages) != group_size for g in groups):
        raise ValueError("all groups in a batch must have the same size")
    return group_size


def group_fields(groups: list[TrainGroup]) -> dict[str, Any]:
    """What every family's batch carries besides model inputs: group size, teacher scores, eval pair indices."""
    fields: dict[str, Any] = {"group_size": group_size_of(groups)}
    if all(g.teacher_scores is not None for g in groups):
        fields["teacher_scores"] = torch.tensor([g.teacher_scores for g in groups], dtype=torch.float32)
    if groups[0].index is not None:
        fields["pair_index"] = torch.tensor([g.index for g in groups], dtype=torch.long)
    return fields


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

    @classmethod
    def for_lengths(
        cls, tokenizer: PreTrainedTokenizerBase, lengths: PairLengths, spec: Any = None
    ) -> CrossEncoderCollator:
        """The collator for these budgets (a cross-encoder's spec adds nothing)."""
        return cls(tokenizer, lengths)

    @property
    def encoder(self) -> PairEncoder:
        if self._encoder is None:
            self._encoder = PairEncoder(self.tokenizer, self.lengths)
        return self._encoder

    def __call__(self, groups: list[TrainGroup]) -> dict[str, Any]:
        fields = group_fields(groups)
        queries = [g.query for g in groups for _ in g.passages]
        passages = [p for g in groups for p in g.passages]
        features = self.encoder.encode(queries, passages)
        multiple = self.pad_to_multiple_of
        if multiple and self.lengths.max_length % multiple:  # rounding up could pass the model's positions
            multiple = None
        batch: dict[str, Any] = dict(
            self.tokenizer.pad(features, pad_to_multiple_of=multiple, return_tensors="pt")
        )
        return {**batch, **fields}


@dataclass
class LLMCollator:
    """Groups into left-padded rows of the spec's input format, ``groups * group_size`` of them.

    A group's own prompt (from its record) wins over the encoder's default prompt.
    """

    encoder: LLMPromptEncoder | TemplateEncoder
    pad_to_multiple_of: int | None = 8

    @classmethod
    def for_lengths(
        cls, tokenizer: PreTrainedTokenizerBase, lengths: PairLengths, spec: Any = None
    ) -> LLMCollator:
        """Rows cut to these budgets in the `LLMSpec`'s format and prompt (None: the BGE layout and prompt)."""
        if spec is None:
            return cls(prompt_encoder(tokenizer, "bge", None, lengths.query_max_len, lengths.passage_max_len,
                                      lengths.max_length))  # fmt: skip
        return cls(
            prompt_encoder(
                tokenizer,
                spec.input_format,
                spec.prompt,
                lengths.query_max_len,
                lengths.passage_max_len,
                lengths.max_length,
                yes_token=spec.yes_token,
                no_token=spec.no_token,
            )  # fmt: skip
        )

    def __call__(self, groups: list[TrainGroup]) -> dict[str, Any]:
        fields = group_fields(groups)
        sequences = self.encoder.encode(
            [g.query for g in groups for _ in g.passages],
            [p for g in groups for p in g.passages],
            [g.prompt for g in groups for _ in g.passages],
        )
        return {**self.encoder.pad_left(sequences, self.pad_to_multiple_of), **fields}

"""LLM reranker input: one definition of ``A: {query}\\nB: {passage}\\n{prompt}`` as token ids.

The BGE LLM rerankers' layout: the tokenizer's BOS, then ``A: {query}`` cut to ``query_max_len`` tokens, ``\\n``,
``B: {passage}`` cut to ``passage_max_len`` tokens, ``\\n``, then the prompt, never cut. Batches are padded on the
left, so the last position of every row is its last real token, where the "Yes" logit is read.

Two details follow FlagEmbedding's FlagLLMReranker so the same pairs give the same ids: BOS is left out when the
tokenizer's BOS is also its pad token, and an optional ``pair_max_len`` caps ``BOS + query + \\n + passage`` by
cutting the passage's end (its ``truncation="only_second"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

DEFAULT_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)
SEPARATOR = "\n"


@dataclass
class LLMPromptEncoder:
    """Token ids for (query, passage[, prompt]) triples in the BGE layout; prompts are tokenized once each."""

    tokenizer: PreTrainedTokenizerBase
    query_max_len: int
    passage_max_len: int
    default_prompt: str = DEFAULT_PROMPT
    pair_max_len: int | None = None
    query_prefix: str = "A: "
    passage_prefix: str = "B: "
    _prompt_ids: dict[str, list[int]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.separator_ids = self._ids(SEPARATOR)
        bos = self.tokenizer.bos_token_id
        self.prefix_ids = [bos] if bos is not None and bos != self.tokenizer.pad_token_id else []

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _cut(self, texts: list[str], limit: int) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=limit)["input_ids"]

    def prompt_ids(self, prompt: str | None) -> list[int]:
        prompt = prompt or self.default_prompt
        if prompt not in self._prompt_ids:
            self._prompt_ids[prompt] = self._ids(prompt)
        return self._prompt_ids[prompt]

    def text(self, query: str, passage: str, prompt: str | None = None) -> str:
        """The whole row as text (uncut, BOS written as its token): what a serving engine is given."""
        bos = self.tokenizer.bos_token if self.prefix_ids else ""
        return (
            f"{bos}{self.query_prefix}{query}{SEPARATOR}{self.passage_prefix}{passage}{SEPARATOR}"
            f"{prompt or self.default_prompt}"
        )

    def passage_room(self, query: str, prompt: str | None = None) -> int:
        """Passage tokens kept beside ``query`` (its ``B: `` prefix not counted; at least 1): a long passage's
        window size. Counted on the passage alone, so a window may differ from its place in the row by a token
        where the tokenizer merges across the prefix."""
        prefix = len(self._ids(self.passage_prefix.rstrip()))
        room = self.passage_max_len - prefix
        if self.pair_max_len is not None:
            head = len(self.prefix_ids) + len(self._cut([self.query_prefix + query], self.query_max_len)[0])
            room = min(room, self.pair_max_len - head - len(self.separator_ids) - prefix)
        return max(1, room)

    def encode(
        self, queries: Sequence[str], passages: Sequence[str], prompts: Sequence[str | None] | None = None
    ) -> list[list[int]]:
        """Unpadded input ids, one list per pair."""
        prompts = pair_prompts(queries, passages, prompts)
        query_ids = self._cut([self.query_prefix + q for q in queries], self.query_max_len)
        passage_ids = self._cut([self.passage_prefix + p for p in passages], self.passage_max_len)
        sequences = []
        for q, p, prompt in zip(query_ids, passage_ids, prompts, strict=True):
            head = self.prefix_ids + q + self.separator_ids
            if self.pair_max_len is not None:
                p = p[: max(self.pair_max_len - len(head), 0)]
            sequences.append(head + p + self.separator_ids + self.prompt_ids(prompt))
        return sequences

    def pad_left(
        self, sequences: Sequence[list[int]], pad_to_multiple_of: int | None = 8
    ) -> dict[str, torch.Tensor]:
        """Left-padded ``input_ids`` and ``attention_mask``: the last column is every row's last real token."""
        return pad_left(sequences, pad_token_id(self.tokenizer), pad_to_multiple_of)


def pair_prompts(
    queries: Sequence[str], passages: Sequence[str], prompts: Sequence[str | None] | None
) -> Sequence[str | None]:
    """Each pair's prompt (None: the encoder's default), after checking that queries and passages pair up."""
    if len(queries) != len(passages):
        raise ValueError(f"{len(queries)} queries but {len(passages)} passages")
    return prompts if prompts is not None else [None] * len(queries)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id padding uses (masked out): the pad token, else EOS, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def pad_left(
    sequences: Sequence[list[int]], pad_id: int, pad_to_multiple_of: int | None = 8
) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` for unpadded id lists."""
    longest = max(len(s) for s in sequences)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, longest - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, longest - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}

"""Length-sorted batching: the longest items go first, so each batch pads little; scores come back in order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from tqdm.auto import tqdm

Item = TypeVar("Item")
Score = TypeVar("Score")


def score_longest_first(
    items: Sequence[Item],
    length: Callable[[Item], int],
    score_batch: Callable[[list[Item]], list[Score]],
    batch_size: int,
    show_progress: bool = False,
) -> list[Score]:
    """``score_batch`` on batches of items sorted longest first; one score per item, in input order.

    Longest first also means an out-of-memory error shows on the first batch, not after minutes.
    """
    order = sorted(range(len(items)), key=lambda i: -length(items[i]))
    scores: list = [None] * len(items)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="scoring", disable=not show_progress, unit="batch"):
        chunk = order[start : start + batch_size]
        for index, score in zip(chunk, score_batch([items[i] for i in chunk]), strict=True):
            scores[index] = score
    return scores


def sigmoid(scores: list[float]) -> list[float]:
    return torch.sigmoid(torch.tensor(scores, dtype=torch.float64)).tolist()


class RanksCandidates:
    """``rank`` for any reranker that has ``_score(pairs, lengths, batch_size)`` and ``lengths``."""

    def rank(
        self, query: str, passages: Sequence[str], top_k: int | None = None, batch_size: int | None = None
    ) -> list[dict[str, object]]:
        """``[{"index", "score", "text"}]`` best first, as sentence-transformers' ``CrossEncoder.rank``."""
        scores = self._score([[query, p] for p in passages], self.lengths, batch_size)
        ranked = sorted(range(len(passages)), key=lambda i: -scores[i])[:top_k]
        return [{"index": i, "score": scores[i], "text": passages[i]} for i in ranked]

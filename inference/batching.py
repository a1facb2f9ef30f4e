"""Scoring in chunks of pairs, longest first within each: memory stays flat however many pairs are scored, each
batch pads little, and scores come back in input order."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from rerankforge.inference.pairs import Pair, to_passages

Item = TypeVar("Item")
Score = TypeVar("Score")

logger = logging.getLogger(__name__)
CHUNK_PAIRS = 4096  # pairs encoded at a time: their token ids are the memory that would grow with the input
AUTO_PROGRESS_BATCHES = 10  # show_progress=None shows a bar when a call has more batches than this


class BatchSize:
    """The batch size of one scoring call: a CUDA out-of-memory error shrinks it (to 3/4 of the failed batch, as
    FlagReranker does) for the rest of the call, chunks included; logged once per call."""

    def __init__(self, value: int):
        if int(value) < 1:
            raise ValueError(f"batch_size must be >= 1, got {value}")
        self.value = int(value)
        self.requested = self.value
        self.logged = False

    def shrink(self, failed: int) -> None:
        self.value = min(self.value, max(1, failed * 3 // 4))
        if not self.logged:
            logger.warning(
                "out of memory at a batch of %d: scoring goes on with batches of %d (and smaller if needed); "
                "pass batch_size=%d to start there",
                failed, self.value, self.value,
            )  # fmt: skip
            self.logged = True


def as_batch_size(batch_size: int | BatchSize) -> BatchSize:
    return batch_size if isinstance(batch_size, BatchSize) else BatchSize(batch_size)


def check_token_budget(max_batch_tokens: int | None, max_length: int) -> None:
    """A budget below one full-length pair could not hold every pair: refused before anything is encoded."""
    if max_batch_tokens is not None and max_batch_tokens < max_length:
        raise ValueError(
            f"max_batch_tokens={max_batch_tokens} is less than one pair of max_length={max_length} tokens; "
            f"pass at least {max_length} (or max_length={max_batch_tokens})"
        )


def batch_rows(longest: int, rows: int, max_batch_tokens: int | None) -> int:
    """Rows of a batch whose longest (first, in longest-first order) row has ``longest`` tokens: at most
    ``rows``, and at most ``max_batch_tokens`` padded tokens in all (as text-embeddings-inference batches)."""
    if max_batch_tokens is None:
        return rows
    return max(1, min(rows, max_batch_tokens // max(1, longest)))


def padded_width(multiple: int | None) -> Callable[[Sequence], int]:
    """A row's length once padded to ``multiple`` (what a token budget counts)."""
    if not multiple:
        return len
    return lambda row: -(-len(row) // multiple) * multiple


def release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def score_longest_first(
    items: Sequence[Item],
    length: Callable[[Item], int],
    score_batch: Callable[[list[Item]], list[Score]],
    batch_size: int | BatchSize,
    progress: tqdm | None = None,
    max_batch_tokens: int | None = None,
) -> list[Score]:
    """``score_batch`` on batches of items sorted longest first; one score per item, in input order.

    A batch holds at most ``batch_size`` items and, when given, ``max_batch_tokens`` padded tokens.

    Longest first also means an out-of-memory error shows on the first batch, not after minutes. Such an error
    (torch.OutOfMemoryError) splits the batch and retries it: nothing is lost or reordered, and the smaller size
    holds for the rest of the call (a ``BatchSize`` shared by its chunks). A single item that does not fit
    raises. ``progress``, when given, is advanced by the number of items of each batch.
    """
    size = as_batch_size(batch_size)
    order = sorted(range(len(items)), key=lambda i: -length(items[i]))
    scores: list = [None] * len(items)
    start = 0
    while start < len(order):
        rows = batch_rows(length(items[order[start]]), size.value, max_batch_tokens)
        batch = order[start : start + rows]
        try:
            batch_scores = score_batch([items[i] for i in batch])
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            failed = True  # handled below, once the error's frames (and their tensors) are released
        else:
            failed = False
        if failed:
            release_cached_memory()
            size.shrink(len(batch))
            continue
        for index, score in zip(batch, batch_scores, strict=True):
            scores[index] = score
        if progress is not None:
            progress.update(len(batch))
        start += len(batch)
    return scores


def progress_bar(pairs: int, batch_size: int, show_progress: bool | None) -> tqdm:
    """One bar counting pairs: shown when asked, or (``None``) when there are more than 10 batches."""
    show = show_progress if show_progress is not None else pairs > AUTO_PROGRESS_BATCHES * batch_size
    return tqdm(total=pairs, desc="scoring", unit="pair", disable=not show)


def score_in_chunks(
    pairs: Sequence[Pair],
    score_chunk: Callable[[Sequence[Pair], tqdm], list[Score]],
    batch_size: int | BatchSize,
    chunk_size: int = CHUNK_PAIRS,
    show_progress: bool | None = None,
) -> list[Score]:
    """``score_chunk`` (encode, then score longest first) on consecutive chunks of whole batches; scores in
    input order, one progress bar across all chunks."""
    batch_size = as_batch_size(batch_size).requested
    step = max(batch_size, chunk_size - chunk_size % batch_size)
    scores: list[Score] = []
    with progress_bar(len(pairs), batch_size, show_progress) as bar:
        for start in range(0, len(pairs), step):
            scores.extend(score_chunk(pairs[start : start + step], bar))
    return scores


def pair_length(pair: Pair) -> int:
    """Characters of query and passage: a cheap stand-in for token length that needs no tokenizer."""
    return len(pair[0]) + len(pair[1])


def shard_indices(lengths: Sequence[int], num_shards: int) -> list[list[int]]:
    """Pair indices for each shard: sorted longest first and dealt round-robin, so every shard gets a similar
    total length (the shards' totals differ by at most the longest pair) and a similar number of pairs; each
    shard in longest-first order. Shared by the device pool's workers and a launch's processes."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[shard::num_shards] for shard in range(num_shards)]


def sigmoid(scores: list[float]) -> list[float]:
    return torch.sigmoid(torch.tensor(scores, dtype=torch.float64)).tolist()


class RanksCandidates:
    """``rank`` for any reranker that has ``_score(pairs, lengths, batch_size)`` and ``lengths``."""

    chunk_size: int = CHUNK_PAIRS  # pairs encoded at a time (rounded to whole batches)
    max_batch_tokens: int | None = None  # padded tokens a batch may hold, besides its pair count
    prefetch: bool | None = None  # encode and pad ahead in a thread; None: on CUDA only (cross-encoders)

    def rank(
        self,
        query: str,
        passages: Sequence[str],
        top_k: int | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> list[dict[str, object]]:
        """``[{"index", "score", "text"}]`` best first, as sentence-transformers' ``CrossEncoder.rank``."""
        passages = to_passages(query, passages)
        scores = self._score(
            [(query, p) for p in passages], self.lengths, batch_size, show_progress=show_progress
        )
        ranked = sorted(range(len(passages)), key=lambda i: -scores[i])[:top_k]
        return [{"index": i, "score": scores[i], "text": passages[i]} for i in ranked]

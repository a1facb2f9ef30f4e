"""The scoring pipeline of every family: encode a chunk, plan length-sorted batches, pad them, run the model.

Why a pipeline: on a GPU the model's forward of one batch takes less time than tokenizing and padding the next,
so doing them one after the other leaves the GPU idle most of the time. With ``prefetch`` a background thread
encodes and pads batches (the Rust tokenizer and numpy release the GIL for most of it) into page-locked memory
while the main thread copies (non-blocking) and runs the model; scores stay on the device until a chunk ends,
so the host does not wait for each batch. The batches, and so the scores, are the same with or without it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from rerankforge.inference.batching import BatchSize, batch_rows, progress_bar, release_cached_memory
from rerankforge.inference.collate import rows

Pair = Sequence[str]
PREFETCH_BATCHES = 4  # padded batches held ahead of the model: enough to hide a slow one, little memory


@dataclass
class Batch:
    """One padded batch and the input positions of its rows."""

    indices: list[int]
    inputs: dict[str, Any]


@dataclass
class Stages:
    """What a backend plugs into the pipeline. ``encode``: pairs to unpadded encodings (anything with a
    ``len``); ``collate``: encodings to padded inputs; ``forward``: inputs to one score per row (a tensor,
    possibly on the device, or a numpy array); ``padded_length``: a row's width once padded (what the token
    budget counts)."""

    encode: Callable[[Sequence[Pair]], list]
    collate: Callable[[list], dict[str, Any]]
    forward: Callable[[dict[str, Any]], Any]
    padded_length: Callable[[int], int] = int


def plan_batches(
    lengths: Sequence[int], size: BatchSize, max_batch_tokens: int | None
) -> Iterator[list[int]]:
    """Positions longest first, cut into batches of at most ``size.value`` rows and ``max_batch_tokens``
    padded tokens (rows x the first, longest, row). ``size`` is read at every batch, so a size that an
    out-of-memory error shrank applies to the batches not yet planned."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    start = 0
    while start < len(order):
        count = batch_rows(lengths[order[start]], size.value, max_batch_tokens)
        yield order[start : start + count]
        start += count


def produce(
    pairs: Sequence[Pair], stages: Stages, size: BatchSize, max_batch_tokens: int | None, chunk: int
) -> Iterator[Batch]:
    """Every batch of the call, chunk after chunk: only one chunk's encodings are held at a time."""
    for offset in range(0, len(pairs), chunk):
        encodings = stages.encode(pairs[offset : offset + chunk])
        widths = [stages.padded_length(len(e)) for e in encodings]
        for positions in plan_batches(widths, size, max_batch_tokens):
            inputs = stages.collate([encodings[i] for i in positions])
            yield Batch([offset + i for i in positions], inputs)


class Prefetcher:
    """Runs ``produce`` in a daemon thread, ``depth`` batches ahead; its errors are raised in the caller, and a
    caller that stops early (an error of its own) stops the thread."""

    _DONE = object()

    def __init__(self, batches: Iterator[Batch], depth: int = PREFETCH_BATCHES):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(batches,), name="rerankforge-prefetch", daemon=True
        )
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, batches: Iterator[Batch]) -> None:
        try:
            for batch in batches:
                if not self._put(batch):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the caller, raised there
            self._put(error)
            return
        self._put(self._DONE)

    def __iter__(self) -> Iterator[Batch]:
        try:
            while True:
                item = self._queue.get()
                if item is self._DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def forward_with_backoff(stages: Stages, inputs: dict[str, Any], size: BatchSize) -> list:
    """Scores of every row of ``inputs``; a CUDA out-of-memory error shrinks ``size`` to 3/4 of the failed
    batch and retries it in parts of that size, in order. A single row that does not fit raises."""
    count = len(inputs["input_ids"])
    if count <= size.value:  # else planned (and prefetched) before an error shrank the size: split it now
        try:
            return [stages.forward(inputs)]
        except torch.OutOfMemoryError:
            if count == 1:
                raise
        release_cached_memory()  # outside the except block: the error's frames (and their tensors) are gone
        size.shrink(count)
    parts = []
    for start in range(0, count, size.value):
        parts.extend(forward_with_backoff(stages, rows(inputs, start, start + size.value), size))
    return parts


def to_floats(scores: list) -> list:
    """One host list from per-batch score tensors or arrays (one device sync per chunk, not per batch): floats
    for one score per row, a list per row for ``[rows, columns]`` tensors (the layerwise family's layers)."""
    if not scores:
        return []
    if isinstance(scores[0], torch.Tensor):
        if scores[0].dim() == 2:
            return torch.cat([s.float() for s in scores]).tolist()
        return torch.cat([s.reshape(-1).float() for s in scores]).tolist()
    return [float(x) for s in scores for x in s.reshape(-1)]


def run_pipeline(
    pairs: Sequence[Pair],
    stages: Stages,
    size: BatchSize,
    max_batch_tokens: int | None,
    chunk: int,
    prefetch: bool,
    progress: tqdm | None = None,
) -> list[float]:
    """Scores of ``pairs`` in input order; batches longest first within each chunk of ``chunk`` pairs."""
    batches = produce(pairs, stages, size, max_batch_tokens, chunk)
    source = Prefetcher(batches) if prefetch else batches
    scores: list = [None] * len(pairs)
    pending_indices: list[int] = []
    pending_scores: list = []

    def settle() -> None:
        for index, score in zip(pending_indices, to_floats(pending_scores), strict=True):
            scores[index] = score
        pending_indices.clear()
        pending_scores.clear()

    try:
        for batch in source:
            pending_scores.extend(forward_with_backoff(stages, batch.inputs, size))
            pending_indices.extend(batch.indices)
            if progress is not None:
                progress.update(len(batch.indices))
            if len(pending_indices) >= chunk:
                settle()
    finally:
        if isinstance(source, Prefetcher):
            source.close()
    settle()
    return scores


def score_through_pipeline(
    pairs: Sequence[Pair],
    stages: Stages,
    batch_size: int,
    max_batch_tokens: int | None,
    chunk_size: int,
    prefetch: bool,
    show_progress: bool | None,
) -> list:
    """The one scoring loop of every family and backend: chunks of whole batches (at most ``chunk_size`` pairs
    encoded at a time), one progress bar, and an out-of-memory shrink that holds for the rest of the call."""
    size = BatchSize(batch_size)
    chunk = max(size.value, chunk_size - chunk_size % size.value)
    with progress_bar(len(pairs), size.value, show_progress) as bar:
        return run_pipeline(pairs, stages, size, max_batch_tokens, chunk, prefetch, bar)


def padded_length(multiple: int | None) -> Callable[[int], int]:
    """A row's width once padded to ``multiple`` (what a token budget counts)."""
    if not multiple:
        return int
    return lambda length: -(-length // multiple) * multiple

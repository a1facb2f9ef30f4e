"""What every scoring call shares: batch sizes that an out-of-memory error shrinks, token budgets, the progress
bar, sharding by length, and sentence-transformers' ``predict`` and ``rank`` on top of a reranker's ``_score``
(the scoring loop itself is inference/pipeline.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from rerankforge.inference.long_passages import LongPassages, score_windows
from rerankforge.inference.long_passages import Pair as WindowPair
from rerankforge.inference.modeling.calibration import Calibration
from rerankforge.inference.modeling.fusion import Fusion
from rerankforge.inference.pairs import Pair, to_pairs, to_passages

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


def release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def progress_bar(pairs: int, batch_size: int, show_progress: bool | None) -> tqdm:
    """One bar counting pairs: shown when asked, or (``None``) when there are more than 10 batches."""
    show = show_progress if show_progress is not None else pairs > AUTO_PROGRESS_BATCHES * batch_size
    return tqdm(total=pairs, desc="scoring", unit="pair", disable=not show)


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


def with_windows(scores: list, counts: list[int] | None, single: bool, return_windows: bool) -> object:
    """``compute_score``'s result: one score (a single pair) or the list, with the windows each passage took
    when asked (1 each where nothing was windowed)."""
    result = scores[0] if single else scores
    if not return_windows:
        return result
    counts = counts if counts is not None else [1] * len(scores)
    return result, (counts[0] if single else counts)


def sigmoid(scores: list[float]) -> list[float]:
    return torch.sigmoid(torch.tensor(scores, dtype=torch.float64)).tolist()


def probabilities(spec: object, scores: list[float], layer: int | None = None) -> list[float]:
    """``normalize=True``'s scores: the calibrated probability where the spec holds a calibration (of this
    ``layer`` for a layerwise model), else the sigmoid."""
    calibration = Calibration.from_dict(getattr(spec, "calibration", None))
    if calibration is None or calibration.map_for(layer) is None:
        return sigmoid(scores)
    return calibration.probabilities(scores, layer)


class RanksCandidates:
    """sentence-transformers' ``predict`` and ``rank`` for any reranker that has ``_score(pairs, lengths,
    batch_size, ..., show_progress=...)`` and ``lengths``: both score through ``_score``, the reranker's one
    scoring path."""

    chunk_size: int = CHUNK_PAIRS  # pairs encoded at a time (rounded to whole batches)
    max_batch_tokens: int | None = None  # padded tokens a batch may hold, besides its pair count
    prefetch: bool | None = None  # encode and pad ahead in a thread; None: on CUDA only (cross-encoders)
    # predict's and rank's default activation, as CrossEncoder.activation_fn for a one-logit model
    activation_fn: Callable[[torch.Tensor], torch.Tensor] = torch.nn.Sigmoid()

    # passages longer than the model reads: None scores as the spec says (rerankforge.json), else truncates
    long_passages: LongPassages | None = None

    def passage_settings(
        self, mode: str | LongPassages | None = None, window: int | None = None, stride: int | None = None
    ) -> LongPassages:
        """A call's long-passage settings: its own, over the reranker's ``long_passages``, over the spec's."""
        spec = getattr(self, "spec", None)
        default = self.long_passages or LongPassages.from_dict(getattr(spec, "long_passages", None))
        return LongPassages.resolve(default, mode, window, stride)

    def passage_room(self, lengths: object, prompt: str | None = None) -> Callable[[str], int]:
        """``query -> passage tokens kept beside it`` with these budgets: each family's encoder knows."""
        raise NotImplementedError

    def _windowed(
        self,
        pairs: Sequence[Pair],
        settings: LongPassages,
        lengths: object,
        score: Callable[[list[WindowPair]], list],
        prompt: str | None = None,
    ) -> tuple[list, list[int]]:
        """``(one raw score per pair, windows per pair)``: the windows of every pair scored by one ``score``
        call (`long_passages.score_windows`)."""
        return score_windows(pairs, settings, self.tokenizer, self.passage_room(lengths, prompt), score)

    def _score_passages(
        self,
        pairs: Sequence[Pair],
        settings: LongPassages,
        lengths: object,
        score: Callable[[list[WindowPair], bool], list],
        normalize: bool = False,
        prompt: str | None = None,
    ) -> tuple[list, list[int] | None]:
        """``(scores, windows per pair or None)`` of ``score(pairs, normalize)``, the family's scoring call: as it
        is in truncate mode, else on every window of every pair at once (raw), aggregated, then normalized."""
        if not settings.windowed:
            return score(pairs, normalize), None
        raw, counts = self._windowed(pairs, settings, lengths, lambda window_pairs: score(window_pairs, False),
                                     prompt)  # fmt: skip
        return (probabilities(getattr(self, "spec", None), raw) if normalize and raw else raw), counts

    def _raw_scores(
        self, pairs: Sequence[Pair], batch_size: int | None = None, show_progress: bool | None = None
    ) -> list[float]:
        """Raw scores of checked pairs in input order: ``compute_score``'s with its defaults (the saved budgets
        and long-passage mode; the last layer of a layerwise model). The FlagEmbedding wrappers add their
        instructions and lengths."""

        def score(some: list[WindowPair], normalize: bool) -> list[float]:
            return self._score(some, self.lengths, batch_size, show_progress=show_progress)

        return self._score_passages(pairs, self.passage_settings(), self.lengths, score)[0]

    def _activated(
        self,
        pairs: Sequence[Pair],
        batch_size: int | None,
        show_progress: bool | None,
        activation_fn: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> torch.Tensor:
        """One float32 score per pair, the activation applied (to ``(pairs, 1)`` logits, as sentence-transformers
        applies it to a one-logit model's); on the reranker's device."""
        return self._activate(self._raw_scores(pairs, batch_size, show_progress), activation_fn)

    def _activate(
        self, raw: list[float], activation_fn: Callable[[torch.Tensor], torch.Tensor] | None
    ) -> torch.Tensor:
        device = getattr(self, "device", None)
        spec = getattr(self, "spec", None)
        if activation_fn is None and self.activation_fn is RanksCandidates.activation_fn and raw:
            # the default activation of a calibrated model is its calibration (the last layer's, layerwise)
            layer = (getattr(self, "layers", None) or [None])[-1]
            return torch.tensor(probabilities(spec, raw, layer), dtype=torch.float32, device=device)
        scores = torch.tensor(raw, dtype=torch.float32, device=device)
        activation_fn = activation_fn if activation_fn is not None else self.activation_fn
        if activation_fn is None or not len(raw):
            return scores
        return activation_fn(scores.unsqueeze(-1)).reshape(len(raw))

    def predict(
        self,
        pairs: Pair | Sequence[Pair],
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        activation_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
    ) -> np.ndarray | torch.Tensor | list[torch.Tensor] | np.float32:
        """sentence-transformers' ``CrossEncoder.predict``: scores in input order, the activation applied
        (``activation_fn``, else ``self.activation_fn``: a sigmoid of ``compute_score``'s raw score;
        ``torch.nn.Identity()`` gives the raw scores).

        Returns a float32 numpy array; with ``convert_to_tensor`` a float32 tensor (on the reranker's device);
        with ``convert_to_numpy=False`` a list of 0-d tensors. One pair (not a list of one) gives one score: a
        numpy float32 (a 0-d tensor with the other two). ``batch_size`` None is the reranker's;
        ``show_progress_bar`` None shows a bar for more than 10 batches.
        """
        pair_list, single = to_pairs(pairs)
        scores = self._activated(pair_list, batch_size, show_progress_bar, activation_fn)
        if convert_to_tensor:
            result = scores
        elif convert_to_numpy:
            result = scores.float().cpu().numpy()
        else:
            result = list(scores)
        return result[0] if single else result

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        activation_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        min_score: float | None = None,
        first_stage_scores: Sequence[float] | None = None,
    ) -> list[dict[str, int | float | str]]:
        """sentence-transformers' ``CrossEncoder.rank``: ``[{"corpus_id", "score"}]`` best first (ties in input
        order), with ``"text"`` (the document) when ``return_documents``; ``top_k`` keeps the first k. The scores
        are `predict`'s (the activation applied: the calibrated probability of a calibrated model, else a
        sigmoid); ``min_score`` drops documents scored below it (e.g. ``threshold(precision=0.9)``).

        ``first_stage_scores`` (one per document: BM25's, a dense retriever's) fuses them with the raw scores as
        the model's stored fusion says (`rerankforge-eval --fusion` chose it): ``"score"`` is then the fused
        score, the order is the fused one, and ``"reranker_score"`` keeps `predict`'s (which ``min_score``
        applies to)."""
        documents = to_passages(query, documents)
        raw = self._raw_scores([(query, d) for d in documents], batch_size, show_progress_bar)
        scores = self._activate(raw, activation_fn).tolist()
        fused = self._fused(raw, first_stage_scores) if first_stage_scores is not None else None
        results: list[dict[str, int | float | str]] = []
        for index, score in enumerate(scores):
            results.append({"corpus_id": index, "score": score if fused is None else fused[index]})
            if fused is not None:
                results[-1]["reranker_score"] = score
            if return_documents:
                results[-1]["text"] = documents[index]
        results.sort(key=lambda result: result["score"], reverse=True)
        if min_score is not None:
            key = "score" if fused is None else "reranker_score"
            results = [result for result in results if result[key] >= min_score]
        return results[:top_k]

    def _fused(self, raw: list[float], first_stage_scores: Sequence[float]) -> list[float]:
        fusion = Fusion.from_dict(getattr(getattr(self, "spec", None), "fusion", None))
        if fusion is None:
            raise ValueError(
                "this model has no stored fusion with the first stage: choose one with `rerankforge-eval --fusion` "
                "on judged data"
            )
        return fusion.fuse(raw, [float(s) for s in first_stage_scores])

    def threshold(self, precision: float | None = None, recall: float | None = None) -> float:
        """The probability threshold (``normalize=True`` / `predict` scale) that reached this precision (the
        lowest such: the most recall) or this recall (the highest such) on the judged pairs the calibration was
        fitted on; refused for a model without a calibration or a precision its data never reached."""
        spec = getattr(self, "spec", None)
        calibration = Calibration.from_dict(getattr(spec, "calibration", None))
        if calibration is None:
            raise ValueError(
                "this model has no calibration: fit one with `rerankforge-eval --calibrate` on judged data"
            )
        row = calibration.threshold_row(precision, recall)
        if row is None:
            wanted = f"precision {precision}" if precision is not None else f"recall {recall}"
            raise ValueError(
                f"no threshold reached {wanted} on the calibration's pairs ({calibration.fitted_on})"
            )
        return row["threshold"]

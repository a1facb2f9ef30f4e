"""Passages longer than the model reads: split into overlapping token windows, score every window, aggregate.

Why: a cross-encoder reads 512 tokens and truncation throws away whatever a long document says after that. The
IR answer (Dai & Callan, 2019) is to score windows of the passage against the query and keep the best (MaxP),
the first (FirstP) or the mean of the best few (here ``meanp``: the mean of the top ``top_k`` windows).

Windows are counted in the model's own tokens and handed to the scorer as text (each window is the passage's
text from its first token's start to its last token's end), so they are the same for every family, for every
backend and for a client that sends them to a serving engine (`split_passage` needs only the tokenizer). A
passage that fits one window is scored as it is, exactly as in ``truncate`` mode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from transformers import PreTrainedTokenizerBase

from rerankforge.inference.modeling.spec import RerankerSpec

logger = logging.getLogger(__name__)

Pair = tuple[str, str]
TRUNCATE, FIRSTP, MAXP, MEANP = "truncate", "firstp", "maxp", "meanp"
MODES = (TRUNCATE, FIRSTP, MAXP, MEANP)
DEFAULT_TOP_K = 3  # meanp: windows averaged
MIN_DEFAULT_WINDOW = 32  # a default window never shrinks below this, however long the query


@dataclass(frozen=True)
class LongPassages:
    """How a scoring call treats passages longer than the model reads.

    ``window``: passage tokens per window (None: what the model keeps beside each query, so a window is never
    cut); ``stride``: tokens between window starts (None: half the window, Dai & Callan's overlap);
    ``top_k``: windows averaged by ``meanp``."""

    mode: str = TRUNCATE
    window: int | None = None
    stride: int | None = None
    top_k: int = DEFAULT_TOP_K

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"long_passages must be one of {MODES}, got {self.mode!r}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 token, got {self.window}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be >= 1 token, got {self.stride}")
        if self.window is not None and self.stride is not None and self.stride > self.window:
            raise ValueError(
                f"stride={self.stride} is longer than window={self.window}: the tokens between windows would "
                "never be scored"
            )
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")

    @property
    def windowed(self) -> bool:
        return self.mode != TRUNCATE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> LongPassages:
        return cls(**data) if data else cls()

    @classmethod
    def resolve(
        cls,
        default: LongPassages,
        mode: str | LongPassages | None = None,
        window: int | None = None,
        stride: int | None = None,
    ) -> LongPassages:
        """A call's settings: ``mode`` (a name or settings) over ``default`` (the reranker's), then the
        call's ``window`` and ``stride``."""
        if isinstance(mode, LongPassages):
            settings = mode
        else:  # a mode name keeps the default's window settings
            settings = default if mode is None else replace(default, mode=mode)
        if window is not None or stride is not None:
            settings = replace(
                settings,
                window=window if window is not None else settings.window,
                stride=stride if stride is not None else settings.stride,
            )
        return settings

    def describe(self) -> str:
        if not self.windowed:
            return "truncate (passages cut at the model's passage budget)"
        window = f"{self.window} tokens" if self.window else "the model's passage budget"
        stride = f"{self.stride} tokens" if self.stride else "half the window"
        top = f", mean of the top {self.top_k}" if self.mode == MEANP else ""
        return f"{self.mode}: windows of {window}, stride {stride}{top}"


def window_spans(length: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``[start, end)`` token spans: starts at 0, stride, 2*stride, ... until a window reaches the end; the last
    window ends at the last token (it may be shorter). A passage of at most ``window`` tokens is one span."""
    if window < 1 or stride < 1 or stride > window:
        raise ValueError(f"window={window}, stride={stride}: need 1 <= stride <= window")
    spans = []
    start = 0
    while start + window < length:
        spans.append((start, start + window))
        start += stride
    spans.append((start, length))
    return spans


def token_offsets(tokenizer: PreTrainedTokenizerBase, passages: Sequence[str]) -> list[list[tuple[int, int]]]:
    """Character spans of each passage's tokens (no special tokens), as the model's fast tokenizer cuts it."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer: windows need its token offsets")
    encoded = tokenizer(list(passages), add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return [[tuple(span) for span in spans] for spans in encoded["offset_mapping"]]


def window_texts(passage: str, offsets: Sequence[tuple[int, int]], window: int, stride: int) -> list[str]:
    """The passage's windows as text: from the first token's start to the last token's end (what lies between
    is kept as written: spaces, punctuation the tokenizer merged)."""
    if len(offsets) <= window:
        return [passage]
    return [
        passage[offsets[start][0] : offsets[end - 1][1]]
        for start, end in window_spans(len(offsets), window, stride)
    ]


def split_passage(
    tokenizer: PreTrainedTokenizerBase, passage: str, window: int, stride: int | None = None
) -> list[str]:
    """One passage's windows: what a client sends a serving engine to get MaxP from scores it truncates
    (score every window, keep the max). The same windows rerankforge scores with this window and stride."""
    return window_texts(
        passage, token_offsets(tokenizer, [passage])[0], window, stride or max(1, window // 2)
    )


@dataclass
class WindowedPairs:
    """Every window of every pair, flat (one scoring call takes them all), and which pair each came from."""

    pairs: list[Pair]
    owners: list[int]
    counts: list[int]


def expand(
    pairs: Sequence[Pair],
    settings: LongPassages,
    tokenizer: PreTrainedTokenizerBase,
    room: Callable[[str], int],
) -> WindowedPairs:
    """The pairs' windows. ``room(query)`` is how many passage tokens the model keeps beside that query: the
    default window, and the size past which an explicit window would be cut (warned once)."""
    unique = list(dict.fromkeys(passage for _, passage in pairs))
    offsets = dict(zip(unique, token_offsets(tokenizer, unique), strict=True))
    rooms: dict[str, int] = {}
    windowed = WindowedPairs([], [], [])
    too_long = 0
    for index, (query, passage) in enumerate(pairs):
        if query not in rooms:
            rooms[query] = room(query)
        window = settings.window or max(rooms[query], MIN_DEFAULT_WINDOW)
        too_long += settings.window is not None and settings.window > rooms[query]
        stride = settings.stride or max(1, window // 2)
        texts = window_texts(passage, offsets[passage], window, min(stride, window))
        if settings.mode == FIRSTP:
            texts = texts[:1]
        windowed.pairs.extend((query, text) for text in texts)
        windowed.owners.extend([index] * len(texts))
        windowed.counts.append(len(texts))
    if too_long:
        logger.warning(
            "window=%d passage tokens is more than the model keeps beside %d of %d queries: those windows "
            "are cut at the end, as truncation cuts a passage",
            settings.window, too_long, len(pairs),
        )  # fmt: skip
    return windowed


def aggregate_values(values: list[float], mode: str, top_k: int) -> float:
    if mode == FIRSTP:
        return values[0]
    if mode == MAXP:
        return max(values)
    best = sorted(values, reverse=True)[:top_k]
    return sum(best) / len(best)


def aggregate(scores: list, windowed: WindowedPairs, settings: LongPassages) -> list:
    """One score per pair from its windows' raw scores (floats, or one row of per-layer floats per window:
    aggregated per layer)."""
    grouped: list[list] = [[] for _ in windowed.counts]
    for owner, score in zip(windowed.owners, scores, strict=True):
        grouped[owner].append(score)
    result = []
    for values in grouped:
        if values and isinstance(values[0], list):
            columns = list(zip(*values, strict=True))
            result.append([aggregate_values(list(c), settings.mode, settings.top_k) for c in columns])
        else:
            result.append(aggregate_values(values, settings.mode, settings.top_k))
    return result


def score_windows(
    pairs: Sequence[Pair],
    settings: LongPassages,
    tokenizer: PreTrainedTokenizerBase,
    room: Callable[[str], int],
    score_raw: Callable[[list[Pair]], list],
) -> tuple[list, list[int]]:
    """``(one aggregated raw score per pair, windows per pair)``: every window of the call is scored in one
    ``score_raw`` call, so windows of all passages share batches under the token budget."""
    windowed = expand(pairs, settings, tokenizer, room)
    raw = score_raw(windowed.pairs) if windowed.pairs else []
    return aggregate(raw, windowed, settings), windowed.counts


def save_long_passages(folder: str, settings: LongPassages) -> RerankerSpec:
    """Store the settings in the folder's `rerankforge.json` (atomically; nothing else changes): the model then
    scores long passages the way it was evaluated."""
    return RerankerSpec.update(folder, "store long-passage settings in", long_passages=settings.to_dict())

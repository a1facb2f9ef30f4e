"""Training passages longer than the model reads, cut to one window each: the window a teacher (or BM25, or
plain position) says the query is about.

Why: training truncates a passage at the model's passage budget, so a positive whose answer sits past the cut
teaches the model that text without the answer is relevant, and a hard negative loses the part that made it
confusing. Each long passage keeps its best-scoring window instead. The windows are `inference.long_passages`'
(spans of the model's own tokens, handed on as the passage's text from the first token's start to the last
token's end), so a model trained on them reads the text that MaxP scores at inference. Nothing is dropped:
every passage stays in its place, and a passage that fits one window is left as it is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from rerankforge.data_tools.retrieval import BM25Index
from rerankforge.data_tools.stats import min_median_max
from rerankforge.inference.long_passages import token_offsets, window_texts

ScoreFn = Callable[[list[list[str]]], list[float]]  # (query, passage) pairs -> raw reranker scores
TEACHER, BM25, FIRST = "teacher", "bm25", "first"
CHOOSERS = (TEACHER, BM25, FIRST)
FIELDS = ("pos", "neg")
TOKENIZE_CHUNK = 10_000  # passages per tokenizer call: the offsets of a whole file at once could fill memory
TEACHER_CHUNK = 50_000  # (query, window) pairs per teacher call; the reranker batches each by length

Slot = tuple[int, str, int]  # (record, "pos" or "neg", position): one long passage of one record


@dataclass
class WindowReport:
    """What the cut did: passages seen and cut (positives and negatives apart), the chooser, and which window
    each cut passage kept (index 0 is the passage's start)."""

    window: int
    stride: int
    chooser: str
    passages: Counter = field(default_factory=Counter)  # "pos" / "neg" -> passages seen
    long: Counter = field(default_factory=Counter)  # "pos" / "neg" -> passages longer than the window
    kept: Counter = field(default_factory=Counter)  # window index -> cut passages that kept it
    windows: list[int] = field(default_factory=list)  # windows of each cut passage
    stale_scores: int = 0  # cut passages whose teacher score is still the whole passage's

    @property
    def cut(self) -> int:
        return sum(self.long.values())

    @property
    def not_first(self) -> int:
        return sum(count for index, count in self.kept.items() if index > 0)

    def lines(self) -> list[str]:
        seen, long = self.passages, self.long
        out = [
            f"passages: {sum(seen.values())} (pos {seen['pos']}, neg {seen['neg']}); "
            f"longer than {self.window} tokens: pos {long['pos']}, neg {long['neg']}"
        ]
        if self.cut:
            histogram = ", ".join(f"{index}: {self.kept[index]}" for index in sorted(self.kept))
            out += [
                f"windows of {self.window} tokens (stride {self.stride}) per long passage "
                f"(min / median / max): {min_median_max(self.windows)}",
                f"window kept, chosen by {self.chooser} (window index: passages): {histogram}; "
                f"not the first: {self.not_first} of {self.cut}",
            ]
        if self.stale_scores:
            out.append(
                f"{self.stale_scores} cut passages still carry the teacher's score of the whole passage: "
                "rescore the file (rerankforge-data score) or cut with --choose teacher"
            )
        return out

    def to_dict(self) -> dict:
        return {
            "window": self.window,
            "stride": self.stride,
            "chooser": self.chooser,
            "passages": {name: self.passages[name] for name in FIELDS},
            "longer_than_window": {name: self.long[name] for name in FIELDS},
            "kept_window": {str(index): self.kept[index] for index in sorted(self.kept)},
            "not_first": self.not_first,
            "windows_per_long_passage": dict(Counter(self.windows)),
            "stale_teacher_scores": self.stale_scores,
        }


def cut_to_windows(
    records: Sequence[dict],
    tokenizer: PreTrainedTokenizerBase,
    window: int,
    stride: int | None = None,
    choose: str = BM25,
    teacher: ScoreFn | None = None,
) -> tuple[list[dict], WindowReport]:
    """New records in which every passage (pos and neg) longer than ``window`` tokens is its best window:
    the ``teacher``'s best (its score of that window replaces the record's pos_scores / neg_scores entry),
    BM25's best for the record's query, or the first. Hard negatives keep their best window too: the most
    confusing one. ``stride`` defaults to half the window, as `long_passages.split_passage`'s does."""
    stride = window_stride(window, stride)
    if choose not in CHOOSERS:
        raise ValueError(f"choose must be one of {', '.join(CHOOSERS)}, got {choose!r}")
    if choose == TEACHER and teacher is None:
        raise ValueError("choosing windows by teacher needs a teacher (--teacher MODEL)")
    report = WindowReport(window, stride, choose)
    windows = long_passage_windows(records, tokenizer, window, stride)
    slots: list[Slot] = []
    for index, record in enumerate(records):
        for name in FIELDS:
            passages = record.get(name, [])
            report.passages[name] += len(passages)
            slots += [(index, name, position) for position, p in enumerate(passages) if p in windows]
            report.long[name] += sum(p in windows for p in passages)
    scores = window_scores(records, slots, windows, choose, teacher)
    cut = [copy_record(record) for record in records]
    for (index, name, position), values in zip(slots, scores, strict=True):
        best = max(range(len(values)), key=values.__getitem__)  # ties: the earliest window
        cut[index][name][position] = windows[records[index][name][position]][best]
        report.kept[best] += 1
        report.windows.append(len(values))
        if f"{name}_scores" in cut[index]:
            if choose == TEACHER:
                cut[index][f"{name}_scores"][position] = values[best]
            else:
                report.stale_scores += 1
    return cut, report


def window_stride(window: int, stride: int | None) -> int:
    """The stride a cut uses (None: half the window), checked before anything is loaded."""
    stride = stride or max(1, window // 2)
    if window < 1 or not 1 <= stride <= window:
        raise ValueError(f"window={window}, stride={stride}: need window >= 1 and 1 <= stride <= window")
    return stride


def long_passage_windows(
    records: Sequence[dict], tokenizer: PreTrainedTokenizerBase, window: int, stride: int
) -> dict[str, list[str]]:
    """passage -> its windows' texts, for each distinct passage longer than ``window`` tokens."""
    unique = list(dict.fromkeys(p for record in records for name in FIELDS for p in record.get(name, [])))
    windows: dict[str, list[str]] = {}
    for start in range(0, len(unique), TOKENIZE_CHUNK):
        chunk = unique[start : start + TOKENIZE_CHUNK]
        for passage, offsets in zip(chunk, token_offsets(tokenizer, chunk), strict=True):
            if len(offsets) > window:
                windows[passage] = window_texts(passage, offsets, window, stride)
    return windows


def window_scores(
    records: Sequence[dict],
    slots: list[Slot],
    windows: dict[str, list[str]],
    choose: str,
    teacher: ScoreFn | None,
) -> list[list[float]]:
    """One score per window of each slot's passage (the highest is kept)."""
    passages = [records[index][name][position] for index, name, position in slots]
    queries = [records[index]["query"] for index, _, _ in slots]
    if choose == FIRST:
        return [[1.0] + [0.0] * (len(windows[p]) - 1) for p in passages]
    if choose == BM25:
        return bm25_window_scores(queries, passages, windows)
    pairs = [[query, text] for query, p in zip(queries, passages, strict=True) for text in windows[p]]
    flat: list[float] = []
    for start in range(0, len(pairs), TEACHER_CHUNK):  # every window of every record, not a call per passage
        flat.extend(teacher(pairs[start : start + TEACHER_CHUNK]))
    values = iter(flat)
    return [[next(values) for _ in windows[p]] for p in passages]


def bm25_window_scores(
    queries: list[str], passages: list[str], windows: dict[str, list[str]]
) -> list[list[float]]:
    """BM25 of each query against its passage's windows; the index (and so IDF) holds every window of every
    distinct long passage of the records."""
    if not passages:
        return []
    first_row: dict[str, int] = {}
    texts: list[str] = []
    for passage, passage_windows in windows.items():
        first_row[passage] = len(texts)
        texts += passage_windows
    index = BM25Index({str(row): text for row, text in enumerate(texts)})
    rows = [range(first_row[p], first_row[p] + len(windows[p])) for p in passages]
    return index.scores(queries, rows)


def copy_record(record: dict) -> dict:
    """A copy whose passage and score lists can change without touching the input's."""
    copied = dict(record)
    for name in (*FIELDS, "pos_scores", "neg_scores"):
        if name in copied:
            copied[name] = list(copied[name])
    return copied

"""Hard-negative mining: training JSONL from a retrieval run, negatives from a rank range, never a relevant one.

Candidates come from a first stage (`first_stage.candidate_run`: BM25, dense, hybrid or a run file). Every
judged-relevant passage and every passage whose text equals a positive's is removed; then, with a teacher, the
filters against unjudged positives (false negatives) drop a candidate the teacher scores too close to the
positive (``absolute_margin`` / ``relative_margin``) or too high (``max_score``), as sentence-transformers'
``mine_hard_negatives`` defines them. What each step dropped is counted in a `MiningReport`; a query left
with too few negatives keeps what it has (it is never padded) and is reported.
"""

from __future__ import annotations

import json
import logging
import math
import random
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from rerankforge.data_tools.first_stage import candidate_run
from rerankforge.data_tools.ir_data import IRDataset
from rerankforge.data_tools.retrieval import Run, ranked
from rerankforge.inference.modeling.files import atomic_writer

logger = logging.getLogger(__name__)

ScoreFn = Callable[[list[list[str]]], list[float]]  # (query, passage) pairs -> raw reranker scores
SAMPLING = ("random", "top")
MARGIN_REFERENCES = {"max": max, "mean": statistics.fmean, "min": min}
FILTERS = ("judged relevant", "same text as a positive", "duplicate text", "max_score", "absolute_margin",
           "relative_margin")  # fmt: skip
EXAMPLES_SHOWN = 3


@dataclass(frozen=True)
class MiningOptions:
    """How negatives are chosen. Margins and ``max_score`` read the teacher's probability (the sigmoid of its
    score, as sentence-transformers' CrossEncoder reports it) and need a teacher. With several positives the
    margins compare with the best-scored one (``margin_reference="max"``: a negative stays when it is clearly
    below at least one positive, as in sentence-transformers, which filters per positive), or with their mean
    or the weakest ("min", the cautious choice, which on CISI's ~40 positives a query left 48 of 53 training
    queries with no negative)."""

    num_negatives: int = 15
    rank_range: tuple[int, int] = (10, 100)
    sampling: str = "random"  # random: a seeded sample of the survivors; top: the best-ranked survivors
    seed: int = 0
    absolute_margin: float | None = None  # keep a negative only if p(neg) <= p(pos) - absolute_margin
    relative_margin: float | None = None  # keep a negative only if p(neg) <= p(pos) * (1 - relative_margin)
    max_score: float | None = None  # keep a negative only if p(neg) <= max_score
    output_scores: bool = False  # write the teacher's raw scores as pos_scores / neg_scores
    margin_reference: str = "max"  # which positive's probability the margins compare with: max, mean or min

    def __post_init__(self) -> None:
        first, last = self.rank_range
        if not 1 <= first <= last:
            raise ValueError(f"rank_range must satisfy 1 <= start <= end, got {list(self.rank_range)}")
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be at least 1, got {self.num_negatives}")
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLING)}, got {self.sampling!r}")
        if self.margin_reference not in MARGIN_REFERENCES:
            raise ValueError(
                f"margin_reference must be one of {', '.join(MARGIN_REFERENCES)}, got {self.margin_reference!r}"
            )
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise ValueError(f"relative_margin must be in [0, 1), got {self.relative_margin}")

    @property
    def needs_teacher(self) -> bool:
        return self.output_scores or any(
            v is not None for v in (self.absolute_margin, self.relative_margin, self.max_score)
        )


@dataclass
class MiningReport:
    """What mining did: queries written, candidates dropped by each filter, queries short of negatives."""

    options: MiningOptions
    queries: int = 0
    written: int = 0
    without_positive: int = 0
    candidates: int = 0
    dropped: Counter = field(default_factory=Counter)
    short: list[tuple[str, int]] = field(
        default_factory=list
    )  # (query, negatives it got) below num_negatives
    left_out: list[str] = field(default_factory=list)  # queries with no negative left

    def lines(self) -> list[str]:
        """What was written and what each filter dropped."""
        first, last = self.options.rank_range
        out = [
            f"{self.written} of {self.queries} judged queries written; {self.candidates} candidates at ranks "
            f"{first}-{last}"
        ]
        if self.without_positive:
            out.append(
                f"{self.without_positive} queries left out: their relevant passages are not in the corpus"
            )
        out += [f"  dropped {self.dropped[name]:>7} {name}" for name in FILTERS if self.dropped[name]]
        return out

    def problems(self) -> list[str]:
        """Queries short of negatives (kept, never padded) and queries left out, with a few examples."""
        out = []
        if self.short:
            examples = "; ".join(f"{q[:60]!r} ({n})" for q, n in self.short[:EXAMPLES_SHOWN])
            out.append(
                f"{len(self.short)} queries have fewer than {self.options.num_negatives} negatives (kept as they "
                f"are, not padded), e.g. {examples}"
            )
        if self.left_out:
            examples = "; ".join(repr(q[:60]) for q in self.left_out[:EXAMPLES_SHOWN])
            out.append(f"{len(self.left_out)} queries left out: no negative survived, e.g. {examples}")
        return out

    def log(self) -> None:
        for line in self.lines():
            logger.info(line)
        for line in self.problems():
            logger.warning(line)


def sigmoid(score: float) -> float:
    return 1.0 / (1.0 + math.exp(-score)) if score >= 0 else math.exp(score) / (1.0 + math.exp(score))


def margin_filter(positive: float, negative: float, options: MiningOptions) -> str | None:
    """The first filter that drops a candidate with teacher probability ``negative`` against the positive's
    ``positive`` (None: it stays). Ties stay: the definitions drop only what scores *above* the bound."""
    if options.max_score is not None and negative > options.max_score:
        return "max_score"
    if options.absolute_margin is not None and negative > positive - options.absolute_margin:
        return "absolute_margin"
    if options.relative_margin is not None and negative > positive * (1 - options.relative_margin):
        return "relative_margin"
    return None


def unjudged_candidates(dataset: IRDataset, run: Run, query_id: str, options: MiningOptions,
                        report: MiningReport) -> list[str]:  # fmt: skip
    """The run's doc ids at ``rank_range`` without judged-relevant ones, positives' texts or repeated texts."""
    first, last = options.rank_range
    relevant = dataset.relevant(query_id)
    positive_texts = {dataset.corpus[d] for d in relevant if d in dataset.corpus}
    seen: set[str] = set()
    kept = []
    for doc_id in ranked(run, query_id)[first - 1 : last]:
        report.candidates += 1
        text = dataset.corpus[doc_id]
        reason = (
            "judged relevant" if doc_id in relevant
            else "same text as a positive" if text in positive_texts
            else "duplicate text" if text in seen
            else None
        )  # fmt: skip
        if reason:
            report.dropped[reason] += 1
            continue
        seen.add(text)
        kept.append(doc_id)
    return kept


def mine_hard_negatives(
    dataset: IRDataset,
    run: Run,
    options: MiningOptions | None = None,
    teacher: ScoreFn | None = None,
    show_progress: bool = True,
    **option_overrides,
) -> tuple[list[dict], MiningReport]:
    """One record per judged query: its relevant passages as ``pos`` and up to ``num_negatives`` negatives from
    the run's ``rank_range`` (1 = best, both ends included) that pass the filters; and the report."""
    options = options or MiningOptions(**option_overrides)
    if options.needs_teacher and teacher is None:
        raise ValueError("margins, max_score and output_scores need a teacher (--teacher MODEL)")
    report = MiningReport(options)
    judged = judged_candidates(dataset, run, options, report)
    scores = teacher_scores(dataset, judged, teacher) if teacher is not None else None
    records = []
    for index, (query_id, positives, candidates) in enumerate(
        tqdm(judged, desc="mining", disable=not show_progress, unit="query")
    ):
        query = dataset.queries[query_id]
        if scores is not None:
            pos_scores, cand_scores = scores[index]
            survivors = teacher_survivors(candidates, pos_scores, cand_scores, options, report)
        else:
            survivors = [(doc_id, None) for doc_id in candidates]
        chosen = choose_negatives(survivors, query_id, options)
        if not chosen:  # a group needs negatives: such a query cannot train, so it is reported and left out
            report.left_out.append(query)
            continue
        if len(chosen) < options.num_negatives:
            report.short.append((query, len(chosen)))
        record = {
            "query": query,
            "pos": [dataset.corpus[d] for d in positives],
            "neg": [dataset.corpus[d] for d, _ in chosen],
        }
        if options.output_scores:
            record["pos_scores"] = list(pos_scores)
            record["neg_scores"] = [s for _, s in chosen]
        records.append(record)
    report.written = len(records)
    return records, report


def judged_candidates(
    dataset: IRDataset, run: Run, options: MiningOptions, report: MiningReport
) -> list[tuple[str, list[str], list[str]]]:
    """(query id, positives, unjudged candidates) for each judged query with a positive in the corpus."""
    judged = []
    for query_id in dataset.judged_queries():
        report.queries += 1
        positives = [d for d in sorted(dataset.relevant(query_id)) if d in dataset.corpus]
        if not positives:
            report.without_positive += 1
            continue
        judged.append((query_id, positives, unjudged_candidates(dataset, run, query_id, options, report)))
    return judged


def teacher_survivors(
    candidates: list[str],
    pos_scores: list[float],
    cand_scores: list[float],
    options: MiningOptions,
    report: MiningReport,
) -> list[tuple[str, float]]:
    """The candidates (with their raw scores) that no margin filter drops against the reference positive."""
    reference = MARGIN_REFERENCES[options.margin_reference]([sigmoid(s) for s in pos_scores])
    survivors = []
    for doc_id, score in zip(candidates, cand_scores, strict=True):
        reason = margin_filter(reference, sigmoid(score), options)
        if reason:
            report.dropped[reason] += 1
        else:
            survivors.append((doc_id, score))
    return survivors


def choose_negatives(
    survivors: list[tuple[str, float | None]], query_id: str, options: MiningOptions
) -> list[tuple[str, float | None]]:
    """Up to ``num_negatives`` survivors: the best-ranked, or a sample seeded per query so runs repeat."""
    if options.sampling == "top":
        return survivors[: options.num_negatives]
    rng = random.Random(f"{options.seed}:{query_id}")
    return rng.sample(survivors, min(options.num_negatives, len(survivors)))


def teacher_scores(
    dataset: IRDataset, judged: list[tuple[str, list[str], list[str]]], teacher: ScoreFn
) -> list[tuple[list[float], list[float]]]:
    """The teacher's raw scores of every (query, positive) and (query, candidate) pair, in one call so it can
    batch them by length: per query, (positive scores, candidate scores)."""
    pairs = [
        [dataset.queries[q], dataset.corpus[d]]
        for q, positives, candidates in judged
        for d in positives + candidates
    ]
    logger.info("teacher scores %d pairs (positives and candidates of %d queries)", len(pairs), len(judged))
    flat = iter(teacher(pairs))
    return [
        ([next(flat) for _ in positives], [next(flat) for _ in candidates])
        for _, positives, candidates in judged
    ]


def mine_from_dataset(
    dataset: IRDataset,
    options: MiningOptions,
    retriever: str = "bm25",
    run: Run | None = None,
    teacher: ScoreFn | None = None,
    dense_model: str | None = None,
    show_progress: bool = True,
) -> tuple[list[dict], MiningReport]:
    """Candidates from ``retriever`` over the data set's corpus (unless a run is given), then the filters."""
    if run is None:
        judged = {q: dataset.queries[q] for q in dataset.judged_queries()}
        run = candidate_run(
            dataset.corpus, judged, retriever, options.rank_range[1], dense_model, show_progress
        )
    records, report = mine_hard_negatives(dataset, run, options, teacher, show_progress)
    report.log()
    return records, report


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    """Write atomically: a crash leaves the previous file or the new one, never half of one."""
    with atomic_writer(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return Path(path)

"""Statistics `rerankforge-data check` prints: group sizes and token lengths against the model's limit."""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rerankforge.data_tools.schema import ValidationReport, iter_lines

PERCENTILES = (50, 90, 99, 100)


def min_median_max(values: Sequence[int]) -> str:
    if not values:
        return "-"
    return f"{min(values)} / {statistics.median(values):g} / {max(values)}"


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of already-sorted values."""
    if not sorted_values:
        return 0
    rank = max(1, round(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class LengthStats:
    name: str
    lengths: list[int]

    def row(self, limit: int | None) -> str:
        values = sorted(self.lengths)
        cells = [f"p{q}={percentile(values, q)}" for q in PERCENTILES]
        over = ""
        if limit is not None and values:
            share = sum(v > limit for v in values) / len(values)
            over = f"  over {limit}: {share:.1%}"
        return f"  {self.name:<9} " + " ".join(f"{c:<10}" for c in cells) + over


def count_summary(report: ValidationReport) -> list[str]:
    return [
        f"queries: {report.records}",
        f"positives per query (min / median / max): {min_median_max(report.pos_counts)}",
        f"negatives per query (min / median / max): {min_median_max(report.neg_counts)}",
        f"queries with teacher scores: {report.with_teacher_scores}, with a prompt: {report.with_prompt}",
    ]


def token_lengths(files: Sequence[Path], tokenizer, sample: int, seed: int = 0) -> dict[str, LengthStats]:
    """Token counts (no special tokens) of queries, passages and query+passage pairs, on a seeded sample."""
    queries: list[str] = []
    pairs: list[tuple[int, str]] = []
    for path in files:
        for _, text in iter_lines(path):
            record = json.loads(text)
            queries.append(record["query"])
            pairs.extend((len(queries) - 1, p) for p in record["pos"] + record.get("neg", []))
    rng = random.Random(seed)
    if len(pairs) > sample:
        pairs = rng.sample(pairs, sample)
    query_ids = sorted({q for q, _ in pairs})
    query_len = dict(
        zip(
            query_ids,
            map(len, tokenizer([queries[i] for i in query_ids], add_special_tokens=False)["input_ids"]),
            strict=False,
        )
    )
    passage_len = [
        len(ids) for ids in tokenizer([p for _, p in pairs], add_special_tokens=False)["input_ids"]
    ]
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    return {
        "query": LengthStats("query", list(query_len.values())),
        "passage": LengthStats("passage", passage_len),
        "pair": LengthStats(
            "pair", [query_len[q] + n + specials for (q, _), n in zip(pairs, passage_len, strict=False)]
        ),
    }

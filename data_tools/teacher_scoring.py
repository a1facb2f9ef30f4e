"""Teacher scores for distillation: add ``pos_scores`` / ``neg_scores`` from any reranker to training records."""

from __future__ import annotations

from collections.abc import Callable, Sequence

ScoreFn = Callable[[list[list[str]]], list[float]]


def add_teacher_scores(records: Sequence[dict], score: ScoreFn) -> list[dict]:
    """New records with the teacher's score for every positive and negative (all pairs scored in one call,
    so the reranker can batch them by length and a launch can split them across its processes)."""
    pairs = [[r["query"], p] for r in records for p in r["pos"] + r.get("neg", [])]
    scores = iter(score(pairs))
    scored = []
    for record in records:
        out = dict(record)
        out["pos_scores"] = [next(scores) for _ in record["pos"]]
        out["neg_scores"] = [next(scores) for _ in record.get("neg", [])]
        scored.append(out)
    return scored

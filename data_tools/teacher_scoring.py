"""Teacher scores for distillation: add ``pos_scores`` / ``neg_scores`` from any reranker to training records."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rerankforge.inference.auto import load_reranker

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


def load_teacher(
    name_or_path: str, device: str | None, dtype, batch_size: int, max_length: int | None
) -> ScoreFn:
    """A reranker (anything `rerankforge.inference` loads) as a function from pairs to raw scores, loaded once."""

    teacher = load_reranker(name_or_path, device=device, dtype=dtype)

    def score_pairs(pairs: list[list[str]]) -> list[float]:
        return teacher.compute_score(pairs, batch_size=batch_size, max_length=max_length) if pairs else []

    return score_pairs

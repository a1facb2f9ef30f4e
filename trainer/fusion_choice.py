"""Never below the first stage: choose the weight that fuses the reranker with it on validation queries, measure
the fused ranking on other (test) queries, and say plainly when the reranker alone loses to the first stage.

The grid runs from the first stage alone (weight 0) to the reranker alone (1) in steps of 0.1; the weight with
the best validation nDCG@10 wins (ties: the higher weight, the reranker's). Test queries are never looked at while
choosing: the same split (seeded) serves the calibration's fit and measure halves.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from rerankforge.data_tools.ir_metrics import paired_comparison, ranking_metrics
from rerankforge.data_tools.retrieval import Run
from rerankforge.inference.modeling.fusion import Fusion
from rerankforge.inference.modeling.spec import RerankerSpec

WEIGHTS = tuple(i / 10 for i in range(11))


def split_queries(query_ids: Sequence[str], fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """(validation, test): a seeded ``fraction`` of the queries, and the rest; refuses a split with an empty side."""
    ordered = sorted(query_ids)
    count = round(len(ordered) * fraction)
    if not 0 < count < len(ordered):
        raise ValueError(
            f"a fraction of {fraction} of {len(ordered)} queries leaves no queries on one side of the split"
        )
    validation = set(random.Random(seed).sample(ordered, count))
    return validation, set(ordered) - validation


def fused_run(candidates: Run, reranked: Run, fusion: Fusion, query_ids: set[str]) -> Run:
    """The fused scores of these queries' candidates."""
    run: Run = {}
    for query_id in sorted(query_ids & set(reranked)):
        documents = list(reranked[query_id])
        first = [candidates.get(query_id, {}).get(d, 0.0) for d in documents]
        scores = fusion.fuse([reranked[query_id][d] for d in documents], first)
        run[query_id] = dict(zip(documents, scores, strict=True))
    return run


def judged_subset(qrels: dict[str, dict[str, int]], query_ids: set[str]) -> dict[str, dict[str, int]]:
    return {q: qrels[q] for q in query_ids if q in qrels}


def choose_fusion(
    qrels: dict[str, dict[str, int]],
    candidates: Run,
    reranked: Run,
    validation: set[str],
    method: str = "interpolation",
    description: str = "",
    top_k: int = 100,
) -> Fusion:
    """The weight with the best nDCG@10 on the validation queries (only their judgments are read)."""
    judged = judged_subset(qrels, validation)
    grid = []
    for weight in WEIGHTS:
        run = fused_run(candidates, reranked, Fusion(method, weight), validation)
        grid.append([weight, ranking_metrics(judged, run, recall_at=top_k)["ndcg@10"]])
    best_weight, _ = max(grid, key=lambda row: (round(row[1], 12), row[0]))
    return Fusion(method, best_weight, description, grid)


def choose_on_split(
    qrels: dict[str, dict[str, int]],
    candidates: Run,
    reranked: Run,
    method: str,
    fraction: float,
    seed: int,
    source: str,
    top_k: int,
) -> tuple[Fusion, list[tuple[str, dict[str, float]]], int]:
    """The fusion chosen on a seeded ``fraction`` of the judged queries, the other queries' rows (first stage,
    reranker, fused), and how many those are."""
    judged = sorted(q for q in reranked if any(r > 0 for r in qrels.get(q, {}).values()))
    validation, test = split_queries(judged, fraction, seed)
    description = f"{source}: {len(validation)} validation queries"
    fusion = choose_fusion(qrels, candidates, reranked, validation, method, description, top_k)
    return fusion, held_out_rows(qrels, candidates, reranked, fusion, test, top_k), len(test)


def save_fusion(folder: str | Path, fusion: Fusion) -> None:
    """Write the fusion into the folder's `rerankforge.json` (atomically; nothing else changes)."""
    RerankerSpec.update(folder, "store a fusion in", fusion=fusion.to_dict())


def held_out_rows(
    qrels: dict[str, dict[str, int]],
    candidates: Run,
    reranked: Run,
    fusion: Fusion,
    test: set[str],
    top_k: int,
) -> list[tuple[str, dict[str, float]]]:
    """First stage, reranker and fused ranking on the test queries only, as `metric_table` rows."""
    judged = judged_subset(qrels, test)
    only = {q: reranked[q] for q in test if q in reranked}
    first = {q: candidates[q] for q in test if q in candidates}
    fused = fused_run(candidates, reranked, fusion, test)
    return [
        ("first stage", ranking_metrics(judged, first, recall_at=top_k)),
        ("reranker", ranking_metrics(judged, only, recall_at=top_k)),
        (
            f"fused ({fusion.method}, weight {fusion.weight:g})",
            ranking_metrics(judged, fused, recall_at=top_k),
        ),
    ]


def below_first_stage(
    qrels: dict[str, dict[str, int]], candidates: Run, reranked: Run, top_k: int = 100
) -> str | None:
    """A plain warning when the reranker's nDCG@10 is below the first stage's on these queries (None: it is not)."""
    queries = set(reranked) & set(candidates)
    judged = judged_subset(qrels, queries)
    if not judged:
        return None
    first = ranking_metrics(judged, {q: candidates[q] for q in queries}, recall_at=top_k)["ndcg@10"]
    ours = ranking_metrics(judged, {q: reranked[q] for q in queries}, recall_at=top_k)["ndcg@10"]
    if ours >= first:
        return None
    versus = paired_comparison(judged, candidates, reranked)
    return (
        f"the reranker is BELOW the first stage here: nDCG@10 {ours:.4f} against {first:.4f} ({ours - first:+.4f}); "
        f"it ranks {versus['worse']} of {sum(versus.values())} judged queries worse and {versus['better']} better. "
        "Fusing the two (--fusion, stored with the model; rank(..., first_stage_scores=...)) keeps the better of "
        "both; or train on this collection (docs/own_collection.md)"
    )

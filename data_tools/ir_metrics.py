"""Ranking metrics from `pytrec_eval` (trec_eval's own code): nDCG@10, MRR@10 and Recall@k, never by hand."""

from __future__ import annotations

import statistics

import pytrec_eval

from rerankforge.data_tools.retrieval import Run, ranked


def cut_run(run: Run, depth: int) -> Run:
    """Each query's top ``depth`` documents: MRR@10 is trec_eval's reciprocal rank on the run cut at 10."""
    return {q: {d: run[q][d] for d in ranked(run, q)[:depth]} for q in run}


def per_query_ndcg10(qrels: dict[str, dict[str, int]], run: Run) -> dict[str, float]:
    """nDCG@10 of each judged query (0 for a judged query the run lacks)."""
    judged = {q: docs for q, docs in qrels.items() if any(r > 0 for r in docs.values())}
    values = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10"}).evaluate(
        {q: run.get(q, {}) for q in judged}
    )
    return {q: values.get(q, {}).get("ndcg_cut_10", 0.0) for q in judged}


def paired_comparison(qrels: dict[str, dict[str, int]], baseline: Run, system: Run) -> dict[str, int]:
    """On how many judged queries ``system`` ranks better, worse or the same as ``baseline`` (nDCG@10)."""
    before, after = per_query_ndcg10(qrels, baseline), per_query_ndcg10(qrels, system)
    deltas = [after[q] - before[q] for q in before]
    return {
        "better": sum(d > 1e-9 for d in deltas),
        "worse": sum(d < -1e-9 for d in deltas),
        "same": sum(abs(d) <= 1e-9 for d in deltas),
    }


def ranking_metrics(qrels: dict[str, dict[str, int]], run: Run, recall_at: int = 100) -> dict[str, float]:
    """Means over the judged queries; a judged query missing from the run counts as 0 (as trec_eval -c)."""
    judged = {q: docs for q, docs in qrels.items() if any(r > 0 for r in docs.values())}
    if not judged:
        raise ValueError("no judged queries: nothing to evaluate")
    full = {q: run.get(q, {}) for q in judged}
    per_query = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10", f"recall.{recall_at}"}).evaluate(full)
    mrr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(cut_run(full, 10))

    def mean(values: dict[str, dict[str, float]], measure: str) -> float:
        return statistics.fmean(values.get(q, {}).get(measure, 0.0) for q in judged)

    return {
        "ndcg@10": mean(per_query, "ndcg_cut_10"),
        "mrr@10": mean(mrr, "recip_rank"),
        f"recall@{recall_at}": mean(per_query, f"recall_{recall_at}"),
    }

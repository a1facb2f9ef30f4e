"""Reciprocal-rank fusion of retrieval runs (Cormack et al., 2009): the `hybrid` retriever's BM25 + dense.

A few lines rather than a dependency: ranx, the library made for run fusion, pulls numba and its LLVM build for
what is one sum here; the formula and k = 60 are the paper's and ranx's default.
"""

from __future__ import annotations

from rerankforge.data_tools.retrieval import Run, ranked
from rerankforge.inference.modeling.fusion import RRF_K


def reciprocal_rank_fusion(runs: list[Run], k: int = RRF_K, depth: int | None = None) -> Run:
    """Each document scores ``sum over runs of 1 / (k + rank)`` (rank 1 = best; a run without it adds 0);
    the fused run keeps the best ``depth`` per query (all when None)."""
    fused: Run = {}
    for query_id in dict.fromkeys(q for run in runs for q in run):
        scores: dict[str, float] = {}
        for run in runs:
            for rank, doc_id in enumerate(ranked(run, query_id), start=1):
                scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (k + rank)
        best = sorted(scores, key=lambda d: (scores[d], d), reverse=True)[:depth]
        fused[query_id] = {d: scores[d] for d in best}
    return fused

"""Where mining's candidates come from: BM25, a dense bi-encoder, their fusion, or a given TREC run file."""

from __future__ import annotations

from rerankforge.data_tools.dense_retrieval import DEFAULT_DENSE_MODEL, DenseIndex
from rerankforge.data_tools.retrieval import BM25Index, Run
from rerankforge.data_tools.run_fusion import reciprocal_rank_fusion

RETRIEVERS = ("bm25", "dense", "hybrid")
HYBRID_MIN_DEPTH = (
    100  # each run is read this deep (at least) before fusion, so fusion can promote from below
)


def candidate_run(
    corpus: dict[str, str],
    queries: dict[str, str],
    retriever: str,
    depth: int,
    dense_model: str | None = None,
    show_progress: bool = True,
    dense_index=None,
) -> Run:
    """The top ``depth`` passages per query from ``retriever`` (``bm25``, ``dense`` or ``hybrid``); a given
    ``dense_index`` (a `DenseIndex` of this corpus) is searched instead of embedding the corpus again."""
    if retriever not in RETRIEVERS:
        raise ValueError(
            f"retriever must be one of {', '.join(RETRIEVERS)} (or a run file), got {retriever!r}"
        )
    read = depth if retriever != "hybrid" else max(depth, HYBRID_MIN_DEPTH)
    runs = []
    if retriever in ("bm25", "hybrid"):
        runs.append(BM25Index(corpus).search(queries, read, show_progress=show_progress))
    if retriever in ("dense", "hybrid"):
        index = dense_index or DenseIndex(
            corpus, dense_model or DEFAULT_DENSE_MODEL, show_progress=show_progress
        )
        runs.append(index.search(queries, read))
    if len(runs) == 1:
        return runs[0]

    return reciprocal_rank_fusion(runs, depth=depth)

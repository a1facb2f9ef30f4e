"""Reranking evaluation: score a first stage's top k for held-out queries and measure nDCG@10, MRR@10, Recall@k.

One `RerankEvalSet` serves `trainer.evaluate()` during training and the `rerankforge-eval` command, so both
report the same numbers for the same model.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass

import torch
from transformers import EvalPrediction

from rerankforge.data_tools.grouping import TrainGroup
from rerankforge.data_tools.ir_data import IRDataset
from rerankforge.data_tools.ir_metrics import ranking_metrics
from rerankforge.data_tools.retrieval import BM25Index, Run, ranked

logger = logging.getLogger(__name__)


@dataclass
class RerankEvalSet:
    """Held-out queries, their first-stage candidates (top k) and their judgments."""

    queries: dict[str, str]
    corpus: dict[str, str]
    candidates: Run
    qrels: dict[str, dict[str, int]]
    top_k: int
    name: str = ""

    @classmethod
    def from_dataset(
        cls,
        dataset: IRDataset,
        top_k: int = 100,
        max_queries: int | None = None,
        seed: int = 0,
        run: Run | None = None,
    ) -> RerankEvalSet:
        """BM25 (or the given run) over the data set's corpus, for its judged queries (a seeded sample)."""
        query_ids = dataset.judged_queries()
        if max_queries is not None and len(query_ids) > max_queries:
            query_ids = sorted(random.Random(seed).sample(query_ids, max_queries), key=query_ids.index)
        queries = {q: dataset.queries[q] for q in query_ids}
        if run is None:
            run = BM25Index(dataset.corpus).search(queries, top_k)
        candidates = {q: {d: run[q][d] for d in ranked(run, q)[:top_k]} for q in query_ids if q in run}
        needed = {d for docs in candidates.values() for d in docs}
        return cls(
            queries=queries,
            corpus={d: dataset.corpus[d] for d in needed},
            candidates=candidates,
            qrels={q: dataset.qrels[q] for q in query_ids},
            top_k=top_k,
            name=dataset.name,
        )

    def pairs(self) -> list[tuple[str, str]]:
        """(query id, doc id) for every candidate, longest text first so eval batches pad little."""
        pairs = [(q, d) for q in self.candidates for d in self.candidates[q]]
        return sorted(pairs, key=lambda p: -(len(self.queries[p[0]]) + len(self.corpus[p[1]])))

    def texts(self, pairs: list[tuple[str, str]]) -> list[list[str]]:
        return [[self.queries[q], self.corpus[d]] for q, d in pairs]

    def run_from_scores(self, pairs: list[tuple[str, str]], scores: list[float]) -> Run:
        run: Run = {}
        for (query_id, doc_id), score in zip(pairs, scores, strict=True):
            run.setdefault(query_id, {})[doc_id] = float(score)
        return run

    def metrics(self, run: Run) -> dict[str, float]:
        """Ranking metrics, plus how healthy the scores are: ``nonfinite_scores`` (a count; when above 0 every
        ranking metric is NaN, not a misleadingly low number) and ``collapsed_queries`` (the share of queries
        whose candidates all got the same score), both logged when they signal trouble."""
        health = score_health(run)
        if health["nonfinite_scores"]:
            logger.error(
                "evaluation: %d of %d scores are NaN or infinite: the model's outputs are not finite, so no "
                "ranking metric is reported (they are NaN)",
                health["nonfinite_scores"], sum(len(docs) for docs in run.values()),
            )  # fmt: skip
            zeros = {q: dict.fromkeys(docs, 0.0) for q, docs in run.items()}  # only for the metric names
            return {**dict.fromkeys(ranking_metrics(self.qrels, zeros, self.top_k), math.nan), **health}
        if health["collapsed_queries"] > COLLAPSE_WARNING:
            logger.warning(
                "evaluation: score collapse: %.0f%% of queries have every candidate scored the same, so their "
                "order is arbitrary (a saturated or dead score head? check the learning rate and the loss)",
                100 * health["collapsed_queries"],
            )
        return {**ranking_metrics(self.qrels, run, recall_at=self.top_k), **health}

    def first_stage_metrics(self) -> dict[str, float]:
        return self.metrics(self.candidates)

    def listwise_loss(self, run: Run) -> float:
        """Mean over queries with a relevant candidate of -log(softmax mass on the relevant candidates):
        the training loss, over each query's whole candidate list."""
        losses = []
        for query_id, docs in run.items():
            relevant = [d for d in docs if self.qrels.get(query_id, {}).get(d, 0) > 0]
            if not relevant:
                continue
            scores = torch.tensor([docs[d] for d in docs], dtype=torch.float64)
            positive = torch.tensor([docs[d] for d in relevant], dtype=torch.float64)
            losses.append((torch.logsumexp(scores, 0) - torch.logsumexp(positive, 0)).item())
        return sum(losses) / len(losses) if losses else math.nan


COLLAPSE_WARNING = 0.5  # share of queries with all-equal scores above which the log warns


def score_health(run: Run) -> dict[str, float]:
    """``nonfinite_scores``: how many scores are NaN or inf; ``collapsed_queries``: the share of queries with two
    or more candidates whose scores are all equal (to a relative 1e-6)."""
    nonfinite = sum(not math.isfinite(s) for docs in run.values() for s in docs.values())
    several = [list(docs.values()) for docs in run.values() if len(docs) > 1]
    collapsed = sum(
        max(scores) - min(scores) <= 1e-6 * max(1.0, abs(max(scores)))
        for scores in several
        if all(math.isfinite(s) for s in scores)
    )
    return {"nonfinite_scores": nonfinite, "collapsed_queries": collapsed / len(several) if several else 0.0}


class EvalPairs(torch.utils.data.Dataset):
    """The eval set's candidate pairs as one-passage groups carrying their index.

    With ``columns`` (the layerwise family: one score column per layer), metrics are reported per column as
    ``<column>_ndcg@10`` ..., and the unprefixed ones are the last column's.
    """

    def __init__(self, eval_set: RerankEvalSet, columns: list[str] | None = None):
        self.eval_set = eval_set
        self.pairs = eval_set.pairs()
        self.columns = columns
        self.last_scores: list[tuple[float, bool]] = []  # (score, judged relevant) of the last evaluation

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> TrainGroup:
        query_id, doc_id = self.pairs[index]
        return TrainGroup(self.eval_set.queries[query_id], [self.eval_set.corpus[doc_id]], index=index)

    def compute_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        """For `Trainer(compute_metrics=...)`: predictions are scores, label_ids the pair indices."""
        columns = self.columns or [""]
        predictions = prediction.predictions.reshape(len(prediction.label_ids.reshape(-1)), len(columns))
        scores = [[0.0] * len(columns) for _ in self.pairs]
        seen = [False] * len(self.pairs)
        for index, row in zip(prediction.label_ids.reshape(-1).tolist(), predictions.tolist(), strict=True):
            scores[int(index)] = row
            seen[int(index)] = True
        if not all(seen):
            raise RuntimeError(f"evaluation scored {sum(seen)} of {len(seen)} pairs")
        metrics: dict[str, float] = {}
        for column, name in enumerate(columns):
            run = self.eval_set.run_from_scores(self.pairs, [row[column] for row in scores])
            found = {**self.eval_set.metrics(run), "loss": self.eval_set.listwise_loss(run)}
            if name:
                metrics.update({f"{name}_{key}": value for key, value in found.items()})
            if column == len(columns) - 1:
                metrics.update(found)
                qrels = self.eval_set.qrels
                self.last_scores = [(row[column], qrels.get(q, {}).get(d, 0) > 0)
                                    for (q, d), row in zip(self.pairs, scores, strict=True)]  # fmt: skip
        return metrics

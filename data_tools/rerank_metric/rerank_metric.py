"""rerank_metric: nDCG@10, MRR@10 and Recall@k of a reranked candidate list, computed by pytrec_eval.

Load it offline by path: ``evaluate.load(rerankforge.data_tools.rerank_metric.MODULE_DIR)``. It calls the same
function as ``rerankforge-eval``, so both give the same numbers.
"""

import datasets
import evaluate

from rerankforge.data_tools.ir_metrics import ranking_metrics

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions: the reranker's score for each (query, document) pair.
    query_ids: the query id of each pair.
    doc_ids: the document id of each pair.
    qrels: {query id: {doc id: relevance}} for every judged query (documents outside the candidates count
        for recall, as in trec_eval).
    k: the depth of Recall@k (default 100).
Returns:
    {"ndcg@10": float, "mrr@10": float, "recall@<k>": float}, means over the judged queries.
Example:
    >>> metric = evaluate.load(MODULE_DIR)
    >>> metric.compute(predictions=[2.0, 1.0], query_ids=["q", "q"], doc_ids=["a", "b"], qrels={"q": {"b": 1}})
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RerankMetric(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("float64"),
                    "query_ids": datasets.Value("string"),
                    "doc_ids": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, query_ids, doc_ids, qrels, k=100):
        run = {}
        for score, query_id, doc_id in zip(predictions, query_ids, doc_ids, strict=True):
            run.setdefault(query_id, {})[doc_id] = float(score)
        return ranking_metrics(qrels, run, recall_at=k)

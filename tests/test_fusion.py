"""Never below the first stage (issue 32): fusing the reranker's scores with the first stage's, with the weight
chosen on validation queries only; the warning when the reranker loses to the first stage; the stored fusion
applied by `rank(..., first_stage_scores=...)`."""

from __future__ import annotations

import json
import random
import shutil

import pytest
from test_evaluation import beir_slice  # noqa: F401  (fixture)

from rerankforge.inference.auto import load_reranker
from rerankforge.inference.modeling.fusion import Fusion
from rerankforge.inference.modeling.spec import CrossEncoderSpec, RerankerSpec
from rerankforge.trainer.eval_cli import main as eval_main
from rerankforge.trainer.fusion_choice import below_first_stage, choose_fusion, split_queries


def test_the_weight_runs_from_the_first_stage_alone_to_the_reranker_alone():
    reranker, first = [0.1, 0.9, 0.5], [30.0, 10.0, 20.0]
    order = lambda scores: sorted(range(3), key=lambda i: -scores[i])  # noqa: E731
    assert order(Fusion("interpolation", 1.0).fuse(reranker, first)) == [1, 2, 0]
    assert order(Fusion("interpolation", 0.0).fuse(reranker, first)) == [0, 2, 1]
    assert Fusion("interpolation", 0.5).fuse(reranker, first) == pytest.approx([0.5, 0.5, 0.5])
    assert order(Fusion("rrf", 1.0).fuse(reranker, first)) == [1, 2, 0]
    with pytest.raises(ValueError, match="weight must lie in"):
        Fusion("interpolation", 1.5)


def collection(seed: int = 0, queries: int = 40, docs: int = 10):
    """Queries whose first stage finds the relevant document at rank 3 and whose reranker puts it first on 70% of
    the queries and last on the rest: the best fusion lies between the two."""
    rng = random.Random(seed)
    qrels, first, reranked = {}, {}, {}
    for q in range(queries):
        query = f"q{q}"
        ids = [f"{query}-d{i}" for i in range(docs)]
        relevant = ids[2]
        qrels[query] = {relevant: 1}
        first[query] = {d: float(docs - i) for i, d in enumerate(ids)}
        good = rng.random() < 0.7
        reranked[query] = {d: (5.0 if good else -5.0) if d == relevant else rng.uniform(-1, 1) for d in ids}
    return qrels, first, reranked


def test_the_weight_is_chosen_on_validation_queries_only():
    qrels, first, reranked = collection()
    validation, test = split_queries(list(qrels), 0.5, seed=0)
    chosen = choose_fusion(qrels, first, reranked, validation).weight
    # poisoned test judgments (every test query's relevant document moved to what both rank last): no change
    poisoned = dict(qrels)
    for query in test:
        poisoned[query] = {f"{query}-d9": 1}
    assert choose_fusion(poisoned, first, reranked, validation).weight == chosen
    # the same poison on the validation queries does change it: the check above could fail
    poisoned_validation = dict(qrels)
    for query in validation:
        poisoned_validation[query] = {f"{query}-d9": 1}
    assert choose_fusion(poisoned_validation, first, reranked, validation).weight != chosen
    assert 0.0 < chosen < 1.0  # neither alone is best on this collection


def test_a_reranker_below_the_first_stage_is_said_plainly():
    qrels, first, reranked = collection()
    worse = {q: {d: -10.0 if d in qrels[q] else s for d, s in docs.items()} for q, docs in reranked.items()}
    message = below_first_stage(qrels, first, worse)
    assert message.startswith("the reranker is BELOW the first stage here: nDCG@10")
    assert "of 40 judged queries worse" in message
    assert below_first_stage(qrels, first, first) is None  # equal is not below


def test_rank_applies_the_stored_fusion_and_refuses_without_one(tmp_path, tiny_bert_dir):
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    spec = CrossEncoderSpec(query_max_len=16, passage_max_len=48, max_length=64, base_model="tiny")
    spec.save(folder)
    documents = ["The giant panda is a bear.", "Paris is in France.", "Bamboo is eaten by pandas.", "Rain."]
    first = [1.0, 4.0, 3.0, 2.0]
    with pytest.raises(ValueError, match="no stored fusion"):
        load_reranker(str(folder), backend="torch", device="cpu").rank("what is a panda?", documents,
                                                                      first_stage_scores=first)  # fmt: skip
    spec.fusion = Fusion("interpolation", 0.0, "test").to_dict()  # the first stage alone
    spec.save(folder)
    reranker = load_reranker(str(folder), backend="torch", device="cpu")
    ranked = reranker.rank("what is a panda?", documents, first_stage_scores=first)
    assert [r["corpus_id"] for r in ranked] == [1, 2, 3, 0]
    probabilities = reranker.predict([("what is a panda?", d) for d in documents]).tolist()
    assert {r["corpus_id"]: r["reranker_score"] for r in ranked} == pytest.approx(
        dict(enumerate(probabilities))
    )


def test_eval_fusion_chooses_reports_on_other_queries_and_stores(tmp_path, tiny_bert_dir, beir_slice, capsys):  # noqa: F811
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    CrossEncoderSpec(query_max_len=32, passage_max_len=96, max_length=128, base_model="tiny").save(folder)
    out = tmp_path / "eval"
    assert eval_main(["--model", str(folder), "--data", str(beir_slice), "--split", "test", "--top-k", "20",
                      "--fusion", "interpolation", "--output", str(out)]) == 0  # fmt: skip
    fusion = json.loads((out / "metrics.json").read_text())["fusion"]
    assert fusion["test_queries"] == 6 and [row[0] for row in fusion["rows"]][:2] == [
        "first stage",
        "reranker",
    ]
    assert len(fusion["grid"]) == 11 and fusion["weight"] in [w for w, _ in fusion["grid"]]
    assert Fusion.from_dict(RerankerSpec.load(folder).fusion).weight == fusion["weight"]
    printed = capsys.readouterr().out
    assert "fusion with the first stage: weight" in printed
    if "reranker is BELOW" not in printed:  # a random tiny model is below BM25 on CISI
        pytest.fail("the warning was not printed for a random model\n" + printed)

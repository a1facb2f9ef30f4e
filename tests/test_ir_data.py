"""Readers, splits, BM25 mining and metrics on real slices of SQuAD v1.1 and CISI."""

from __future__ import annotations

import json
import math

import pytest
from conftest import SHARED_DATA

from rerankforge.data_tools.cli import main as data_main
from rerankforge.data_tools.ir_data import (
    load_beir,
    load_ir_dataset,
    load_squad,
    select_split,
    split_by_group,
)
from rerankforge.data_tools.ir_metrics import ranking_metrics
from rerankforge.data_tools.mining import mine_hard_negatives
from rerankforge.data_tools.retrieval import BM25Index, ranked, read_trec_run, write_trec_run

SQUAD = SHARED_DATA / "squad-v1.1" / "dev-v1.1.json"
CISI = SHARED_DATA / "cisi"


@pytest.fixture(scope="module")
def squad():
    return load_squad(SQUAD)


@pytest.fixture(scope="module")
def cisi():
    return load_beir(CISI, "test")


def test_squad_reader_counts(squad):
    assert (len(squad.corpus), len(squad.queries)) == (2067, 10570)
    assert len(set(squad.query_groups.values())) == 48
    assert all(len(docs) == 1 and next(iter(docs)) in squad.corpus for docs in squad.qrels.values())
    question = next(iter(squad.queries))
    (doc,) = squad.qrels[question]
    assert squad.corpus[doc].startswith("Super Bowl 50. ")  # title, then the paragraph


def test_cisi_reader_counts(cisi):
    assert (len(cisi.corpus), len(cisi.queries), len(cisi.judged_queries())) == (1460, 112, 76)
    assert sum(len(docs) for docs in cisi.qrels.values()) == 3114


def test_unknown_beir_split_names_the_available_ones():
    with pytest.raises(FileNotFoundError, match=r"available: test"):
        load_beir(CISI, "dev")


def test_squad_split_by_article_shares_no_question_paragraph_or_article(squad):
    train, held_out = split_by_group(squad, eval_fraction=0.2, seed=0)
    assert not set(train.queries) & set(held_out.queries)
    assert not set(train.corpus) & set(held_out.corpus)
    assert not set(train.query_groups.values()) & set(held_out.query_groups.values())
    assert len(set(held_out.query_groups.values())) == 10  # round(48 * 0.2)
    assert len(train.queries) + len(held_out.queries) == 10570
    assert len(train.corpus) + len(held_out.corpus) == 2067
    for part in (train, held_out):  # every question's paragraph is on its own side
        assert all(doc in part.corpus for docs in part.qrels.values() for doc in docs)
    assert select_split(squad, "test").queries == held_out.queries  # the eval command's "test" is this part


def test_beir_split_is_by_query(cisi):
    train, held_out = split_by_group(cisi, eval_fraction=0.25, seed=3)
    assert not set(train.queries) & set(held_out.queries)
    assert train.corpus == held_out.corpus == cisi.corpus


def test_mined_negatives_never_include_a_judged_relevant_passage(cisi):
    judged = {q: cisi.queries[q] for q in cisi.judged_queries()}
    run = BM25Index(cisi.corpus).search(judged, 100)
    records, _ = mine_hard_negatives(
        cisi, run, num_negatives=20, rank_range=(1, 100), seed=0, show_progress=False
    )
    assert len(records) == 76
    for query_id, record in zip(cisi.judged_queries(), records, strict=True):
        assert record["query"] == cisi.queries[query_id]
        relevant_texts = {cisi.corpus[d] for d in cisi.relevant(query_id)}  # CISI has duplicate texts
        assert set(record["pos"]) == relevant_texts
        assert not set(record["neg"]) & relevant_texts
        assert set(record["neg"]) <= {cisi.corpus[d] for d in ranked(run, query_id)[:100]}
        assert len(set(record["neg"])) == len(record["neg"])


def test_mining_takes_negatives_only_from_the_rank_range(squad):
    part = squad.subset(list(squad.queries)[:200], "slice")
    run = BM25Index(part.corpus).search({q: part.queries[q] for q in part.queries}, 30)
    records, _ = mine_hard_negatives(
        part, run, num_negatives=5, rank_range=(10, 30), seed=1, show_progress=False
    )
    text_to_id = {text: doc for doc, text in part.corpus.items()}
    for query_id, record in zip(part.queries, records, strict=True):
        allowed = set(ranked(run, query_id)[9:30])
        assert {text_to_id[n] for n in record["neg"]} <= allowed
    again, _ = mine_hard_negatives(
        part, run, num_negatives=5, rank_range=(10, 30), seed=1, show_progress=False
    )
    assert again == records


def test_metrics_equal_hand_computation_on_a_hand_made_run():
    qrels = {"q1": {"d1": 1, "d4": 1}, "q2": {"d9": 1}, "q3": {"d7": 0}}  # q3 has no relevant doc: not judged
    run = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.5, "d4": 1.0}, "q2": {f"d{i}": 20.0 - i for i in range(12)}}
    metrics = ranking_metrics(qrels, run, recall_at=3)
    dcg_q1 = 1 + 1 / math.log2(5)  # relevant at ranks 1 and 4
    idcg_q1 = 1 + 1 / math.log2(3)
    ndcg_q2 = 1 / math.log2(11)  # d9 at rank 10, inside the cut
    assert metrics["ndcg@10"] == pytest.approx((dcg_q1 / idcg_q1 + ndcg_q2) / 2)
    assert metrics["mrr@10"] == pytest.approx((1.0 + 1 / 10) / 2)
    assert metrics["recall@3"] == pytest.approx((0.5 + 0.0) / 2)
    # a judged query absent from the run counts as zero, as in trec_eval -c
    assert ranking_metrics(qrels, {"q1": run["q1"]}, recall_at=3)["mrr@10"] == pytest.approx(0.5)


def test_paired_comparison_counts_queries_by_ndcg_change():
    from rerankforge.data_tools.ir_metrics import paired_comparison

    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    baseline = {"q1": {"a": 1.0, "x": 2.0}, "q2": {"b": 2.0, "x": 1.0}, "q3": {"c": 2.0}}
    system = {"q1": {"a": 3.0, "x": 2.0}, "q2": {"b": 0.0, "x": 1.0}, "q3": {"c": 5.0}}
    assert paired_comparison(qrels, baseline, system) == {"better": 1, "worse": 1, "same": 1}


def test_mrr_at_10_ignores_a_first_hit_below_rank_10():
    run = {"q": {f"d{i}": 100.0 - i for i in range(20)}}
    assert ranking_metrics({"q": {"d12": 1}}, run)["mrr@10"] == 0.0


def test_evaluate_module_gives_the_same_numbers_offline():
    import evaluate

    from rerankforge.data_tools.rerank_metric import MODULE_DIR

    # q3 is judged but absent from the run (it counts as 0); q4 has no relevant document (not judged)
    qrels = {"q1": {"d1": 1, "d4": 1}, "q2": {"d9": 1}, "q3": {"d7": 1}, "q4": {"d8": 0}}
    run = {
        "q1": {"d1": 3.0, "d2": 2.0, "d4": 1.0},
        "q2": {"d8": 2.0, "d5": 1.0, "d9": 0.0},
        "q4": {"d8": 1.0},
    }
    flat = [(q, d, s) for q in run for d, s in run[q].items()][::-1]  # pairs in no particular order
    metric = evaluate.load(MODULE_DIR)
    result = metric.compute(
        predictions=[s for *_, s in flat], query_ids=[q for q, *_ in flat], doc_ids=[d for _, d, _ in flat],
        qrels=qrels, k=2,
    )  # fmt: skip
    # by hand: q1 has its relevant documents at ranks 1 and 3, q2 its one at rank 3
    ndcg_q1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    ndcg_q2 = 1 / math.log2(4)
    assert result == pytest.approx(
        {"ndcg@10": (ndcg_q1 + ndcg_q2) / 3, "mrr@10": (1 + 1 / 3) / 3, "recall@2": (1 / 2 + 0) / 3}
    )


def test_ties_are_ordered_as_trec_eval_orders_them():
    from rerankforge.data_tools.ir_metrics import cut_run

    run = {"q": {"a": 1.0, "c": 1.0, "b": 1.0, "z": 0.5}}
    assert ranked(run, "q") == ["c", "b", "a", "z"]  # equal scores: larger doc id first
    # so MRR@10's cut and pytrec_eval's own ordering agree on which tied document comes first
    qrels = {"q": {"a": 1}}
    assert ranking_metrics(qrels, cut_run(run, 1))["mrr@10"] == 0.0
    assert ranking_metrics(qrels, run)["mrr@10"] == pytest.approx(1 / 3)


def test_trec_run_round_trips_and_bad_lines_are_named(tmp_path):
    run = {"q1": {"a": 2.5, "b": 1.0}, "q2": {"c": 0.25}}
    path = write_trec_run(run, tmp_path / "x.run", "test")
    assert read_trec_run(path) == run
    assert path.read_text().splitlines()[0] == "q1 Q0 a 1 2.5 test"
    (tmp_path / "bad.run").write_text("q1 Q0 a 1 2.5 t\nq1 Q0 b 2\n")
    with pytest.raises(ValueError, match=r"bad.run:2: expected 6 fields"):
        read_trec_run(tmp_path / "bad.run")


def test_mine_command_writes_valid_training_jsonl(tmp_path, capsys):
    out = tmp_path / "cisi-train.jsonl"
    code = data_main(
        ["mine", str(CISI), str(out), "--split", "test", "--num-negatives", "7", "--rank-range", "5", "50"]
    )
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 76 and all(len(r["neg"]) == 7 for r in records)
    assert data_main(["check", str(out), "--train-group-size", "8"]) == 0
    assert "76 queries" in capsys.readouterr().out


def test_missing_data_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_ir_dataset(tmp_path / "absent")

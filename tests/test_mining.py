"""Hard-negative mining on real slices of CISI and SQuAD: dense, hybrid and run-file candidates, the teacher's
false-negative filters (hand-checked scores), reports, the BEIR split writer and train / test qrels recipes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from rerankforge.data_tools.cli import main as data_main
from rerankforge.data_tools.first_stage import candidate_run
from rerankforge.data_tools.ir_data import IRDataset, load_beir, load_squad, split_by_group, write_beir
from rerankforge.data_tools.mining import MiningOptions, margin_filter, mine_hard_negatives, sigmoid
from rerankforge.data_tools.retrieval import BM25Index, ranked, write_trec_run
from rerankforge.data_tools.run_fusion import reciprocal_rank_fusion
from rerankforge.data_tools.schema import validate_files
from rerankforge.trainer.cli import parse_config
from rerankforge.trainer.training_run import prepare_data

CISI = SHARED_DATA / "cisi"
SQUAD = SHARED_DATA / "squad-v1.1" / "dev-v1.1.json"


@pytest.fixture(scope="module")
def cisi():
    return load_beir(CISI, "test")


@pytest.fixture(scope="module")
def cisi_slice(cisi) -> IRDataset:
    """10 judged CISI queries over their 235 relevant documents plus 150 others: small enough to embed in seconds,
    with CISI's duplicate texts kept (some relevant documents share their text with unjudged ones)."""
    queries = cisi.judged_queries()[:10]
    relevant = {d for q in queries for d in cisi.relevant(q)}
    others = [d for d in cisi.corpus if d not in relevant][:150]
    keep = relevant | set(others)
    return IRDataset(
        corpus={d: t for d, t in cisi.corpus.items() if d in keep},
        queries={q: cisi.queries[q] for q in queries},
        qrels={q: cisi.qrels[q] for q in queries},
        name="cisi-slice",
    )


@pytest.fixture(scope="module")
def slice_index(cisi_slice):
    """The slice's passages embedded once (all-MiniLM-L6-v2) for every dense and hybrid test."""
    from rerankforge.data_tools.dense_retrieval import DenseIndex

    return DenseIndex(cisi_slice.corpus, show_progress=False, use_faiss=False)


def judged_texts(dataset: IRDataset, query_id: str) -> set[str]:
    return {dataset.corpus[d] for d in dataset.relevant(query_id)}


def assert_no_false_negative_by_judgment(dataset: IRDataset, records: list[dict]) -> None:
    for query_id, record in zip(dataset.judged_queries(), records, strict=True):
        assert record["query"] == dataset.queries[query_id]
        assert set(record["pos"]) == judged_texts(dataset, query_id)
        assert not set(record["neg"]) & judged_texts(dataset, query_id)  # no judged doc, no text equal to one
        assert len(set(record["neg"])) == len(record["neg"])


@pytest.mark.parametrize("retriever", ["dense", "hybrid"])
def test_dense_and_hybrid_mining_never_return_a_judged_or_equal_passage(cisi_slice, slice_index, retriever):
    queries = {q: cisi_slice.queries[q] for q in cisi_slice.judged_queries()}
    run = candidate_run(
        cisi_slice.corpus, queries, retriever, 60, show_progress=False, dense_index=slice_index
    )
    assert all(len(run[q]) == 60 for q in queries)
    records, report = mine_hard_negatives(
        cisi_slice, run, MiningOptions(num_negatives=20, rank_range=(1, 60)), show_progress=False
    )
    assert len(records) == 10
    assert_no_false_negative_by_judgment(cisi_slice, records)
    assert report.dropped["judged relevant"] > 0  # the retriever did find judged documents: they were removed
    hit = sum(d in cisi_slice.relevant(q) for q in queries for d in ranked(run, q)[:10])
    assert hit > 10  # a real retriever, not noise: judged documents in the top 10


def test_hybrid_is_the_reciprocal_rank_fusion_of_bm25_and_dense(cisi_slice, slice_index):
    queries = {q: cisi_slice.queries[q] for q in cisi_slice.judged_queries()[:3]}
    bm25 = candidate_run(cisi_slice.corpus, queries, "bm25", 100, show_progress=False)
    dense = candidate_run(
        cisi_slice.corpus, queries, "dense", 100, show_progress=False, dense_index=slice_index
    )
    hybrid = candidate_run(
        cisi_slice.corpus, queries, "hybrid", 20, show_progress=False, dense_index=slice_index
    )
    for q in queries:
        rank_bm25 = {d: r for r, d in enumerate(ranked(bm25, q), start=1)}
        rank_dense = {d: r for r, d in enumerate(ranked(dense, q), start=1)}
        by_hand = {
            d: (1 / (60 + rank_bm25[d]) if d in rank_bm25 else 0)
            + (1 / (60 + rank_dense[d]) if d in rank_dense else 0)
            for d in set(rank_bm25) | set(rank_dense)
        }
        best = sorted(by_hand, key=lambda d: (by_hand[d], d), reverse=True)[:20]
        assert ranked(hybrid, q) == best
        assert all(math.isclose(hybrid[q][d], by_hand[d]) for d in best)


def test_rrf_of_hand_made_runs():
    runs = [{"q": {"a": 3.0, "b": 2.0, "c": 1.0}}, {"q": {"c": 9.0, "a": 1.0}}]
    fused = reciprocal_rank_fusion(runs, k=1)
    assert fused["q"] == pytest.approx({"a": 1 / 2 + 1 / 3, "b": 1 / 3, "c": 1 / 4 + 1 / 2})
    assert ranked(fused, "q") == ["a", "c", "b"]


def test_margins_and_max_score_drop_exactly_what_their_definitions_say():
    # positive p = 0.8; candidates' probabilities, best-ranked first
    corpus = {"pos": "the positive", **{f"c{i}": f"candidate {i}" for i in range(6)}}
    probabilities = {"pos": 0.8, "c0": 0.95, "c1": 0.8, "c2": 0.75, "c3": 0.7, "c4": 0.4, "c5": 0.1}
    logit = {k: math.log(p / (1 - p)) for k, p in probabilities.items()}
    text_to_id = {t: d for d, t in corpus.items()}
    dataset = IRDataset(corpus, {"q": "a query"}, {"q": {"pos": 1}})
    run = {"q": {d: 10.0 - i for i, d in enumerate(["c0", "c1", "c2", "c3", "c4", "c5"])}}

    def teacher(pairs):
        return [logit[text_to_id[passage]] for _, passage in pairs]

    def kept(**margins):
        options = MiningOptions(num_negatives=6, rank_range=(1, 6), sampling="top", **margins)
        records, report = mine_hard_negatives(dataset, run, options, teacher, show_progress=False)
        return [text_to_id[t] for t in records[0]["neg"]] if records else [], report

    # absolute 0.05: keep p <= 0.75 (c2 sits on the bound and stays)
    negatives, report = kept(absolute_margin=0.05)
    assert negatives == ["c2", "c3", "c4", "c5"] and report.dropped["absolute_margin"] == 2
    # relative 0.5: keep p <= 0.4
    negatives, report = kept(relative_margin=0.5)
    assert negatives == ["c4", "c5"] and report.dropped["relative_margin"] == 4
    # max_score 0.72: keep p <= 0.72; combined with absolute 0.5 (keep p <= 0.3): max_score counts first
    negatives, report = kept(max_score=0.72)
    assert negatives == ["c3", "c4", "c5"] and report.dropped["max_score"] == 3
    negatives, report = kept(max_score=0.72, absolute_margin=0.5)
    assert negatives == ["c5"] and (report.dropped["max_score"], report.dropped["absolute_margin"]) == (3, 2)
    assert report.short == [("a query", 1)]  # reported, not padded
    # nothing survives: the query is left out and named
    negatives, report = kept(max_score=0.05)
    assert negatives == [] and report.left_out == ["a query"] and report.written == 0
    assert margin_filter(0.8, 0.8, MiningOptions(relative_margin=0.0)) is None  # ties stay


def test_with_several_positives_the_margin_compares_with_the_chosen_reference():
    corpus = {"p1": "strong positive", "p2": "weak positive", "c": "candidate"}
    probability = {"strong positive": 0.9, "weak positive": 0.3, "candidate": 0.5}
    dataset = IRDataset(corpus, {"q": "a query"}, {"q": {"p1": 1, "p2": 1}})
    run = {"q": {"c": 1.0}}

    def teacher(pairs):
        return [math.log(probability[p] / (1 - probability[p])) for _, p in pairs]

    kept = {}
    for reference in (
        "max",
        "mean",
        "min",
    ):  # bound p(ref) - 0.05: 0.85, 0.55, 0.25 against the candidate's 0.5
        options = MiningOptions(
            num_negatives=1, rank_range=(1, 1), absolute_margin=0.05, margin_reference=reference
        )
        records, _ = mine_hard_negatives(dataset, run, options, teacher, show_progress=False)
        kept[reference] = bool(records)
    assert kept == {"max": True, "mean": True, "min": False}


def test_sampling_top_takes_the_best_ranked_survivors_and_random_is_seeded(cisi):
    judged = {q: cisi.queries[q] for q in cisi.judged_queries()}
    run = BM25Index(cisi.corpus).search(judged, 40)
    top, _ = mine_hard_negatives(cisi, run, MiningOptions(num_negatives=5, rank_range=(1, 40), sampling="top"),
                                 show_progress=False)  # fmt: skip
    for query_id, record in zip(cisi.judged_queries(), top, strict=True):
        unjudged, seen = [], set()
        for d in ranked(run, query_id):
            text = cisi.corpus[d]
            if text not in judged_texts(cisi, query_id) and text not in seen:
                unjudged.append(text)
                seen.add(text)
        assert record["neg"] == unjudged[:5]
    options = MiningOptions(num_negatives=5, rank_range=(1, 40), sampling="random", seed=3)
    first, _ = mine_hard_negatives(cisi, run, options, show_progress=False)
    again, _ = mine_hard_negatives(cisi, run, options, show_progress=False)
    assert first == again and first != top


def test_run_file_and_teacher_paths_on_cisi_from_the_command_line(cisi, tmp_path, tiny_bert_dir, capsys):
    from rerankforge.inference import Reranker

    judged = {q: cisi.queries[q] for q in cisi.judged_queries()}
    run = BM25Index(cisi.corpus).search(judged, 30)
    run_path = write_trec_run(run, tmp_path / "bm25.run", "bm25")
    teacher = Reranker.from_pretrained(str(tiny_bert_dir), device="cpu")
    # a bound inside the (random) teacher's range of probabilities, so it drops some candidates and keeps some
    sample = [[judged[q], cisi.corpus[d]] for q in list(judged)[:5] for d in ranked(run, q)]
    bound = sorted(teacher.compute_score(sample, normalize=True))[len(sample) // 2]
    out = tmp_path / "mined.jsonl"
    argv = ["mine", str(CISI), str(out), "--split", "test", "--run", str(run_path), "--rank-range", "1", "30"]
    argv += ["--num-negatives", "8", "--teacher", str(tiny_bert_dir), "--max-score", repr(bound)]
    argv += ["--output-scores", "--device", "cpu"]
    assert data_main(argv) == 0
    printed = capsys.readouterr().out
    assert "negatives from run file" in printed and "max_score" in printed
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and validate_files([out], train_group_size=2).ok
    by_query = {cisi.queries[q]: q for q in judged}
    for record in records[:10]:
        query_id = by_query[record["query"]]
        allowed = {cisi.corpus[d] for d in ranked(run, query_id)[:30]}
        assert set(record["neg"]) <= allowed and not set(record["neg"]) & judged_texts(cisi, query_id)
        scores = teacher.compute_score([[record["query"], p] for p in record["pos"] + record["neg"]])
        assert scores == pytest.approx(record["pos_scores"] + record["neg_scores"], abs=1e-4)
        assert all(sigmoid(s) <= bound for s in record["neg_scores"])
    assert data_main(["check", str(out), "--train-group-size", "2"]) == 0


def test_mining_that_leaves_nothing_writes_nothing(tmp_path, tiny_bert_dir, capsys):
    out = tmp_path / "none.jsonl"
    argv = ["mine", str(CISI), str(out), "--split", "test", "--rank-range", "1", "5", "--num-negatives", "2"]
    argv += ["--teacher", str(tiny_bert_dir), "--max-score", "0", "--device", "cpu"]
    assert data_main(argv) == 2
    assert "no query kept a negative" in capsys.readouterr().err and not out.exists()


def test_a_teacher_filter_without_a_teacher_is_an_error(tmp_path, capsys):
    argv = ["mine", str(CISI), str(tmp_path / "x.jsonl"), "--split", "test", "--max-score", "0.9"]
    assert data_main(argv) == 2
    assert "need --teacher" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_split_writes_a_beir_folder_that_reads_back_with_disjoint_train_and_test(tmp_path, capsys):
    assert data_main(["split", str(SQUAD), str(tmp_path / "squad-beir"), "--test-fraction", "0.2"]) == 0
    squad = load_squad(SQUAD)
    train, test = (load_beir(tmp_path / "squad-beir", s) for s in ("train", "test"))
    assert train.corpus == squad.corpus and train.queries == squad.queries
    assert not set(train.qrels) & set(test.qrels)
    assert len(train.qrels) + len(test.qrels) == len(squad.qrels)
    expected_train, _ = split_by_group(squad, 0.2, 0)  # the same article split the recipes use
    assert set(train.qrels) == set(expected_train.qrels)
    assert "split by article" in capsys.readouterr().out


def test_a_recipe_trains_on_train_qrels_and_evaluates_on_test_qrels(cisi, tmp_path):
    judged = cisi.judged_queries()
    write_beir(cisi, {"train": {q: cisi.qrels[q] for q in judged[:50]},
                      "test": {q: cisi.qrels[q] for q in judged[50:]}}, tmp_path / "cisi")  # fmt: skip
    argv = ["--model_name_or_path", "m", "--ir_data", str(tmp_path / "cisi"), "--ir_split", "train"]
    argv += ["--ir_eval_split", "test", "--output_dir", str(tmp_path / "out"), "--mine_rank_range", "1", "30"]
    argv += ["--mine_num_negatives", "4", "--eval_top_k", "10", "--use_cpu", "true"]
    config = parse_config(argv)
    prepared = prepare_data(config)
    eval_set = prepared.eval_set
    assert set(eval_set.queries) == set(judged[50:])
    trained = [json.loads(line)["query"] for line in Path(prepared.train_files[0]).read_text().splitlines()]
    assert trained == [cisi.queries[q] for q in judged[:50]]
    assert config.data.train_data is None  # the mined file is the run's result, not a rewritten setting
    # overlapping splits would evaluate on training queries: refused before any mining
    write_beir(cisi, {"train": {q: cisi.qrels[q] for q in judged[:50]},
                      "test": {q: cisi.qrels[q] for q in judged[40:]}}, tmp_path / "overlap")  # fmt: skip
    config = parse_config([*argv[:3], str(tmp_path / "overlap"), *argv[4:]])
    with pytest.raises(ValueError, match="share 10 queries"):
        prepare_data(config)


def test_teacher_options_in_a_recipe_need_a_teacher():
    with pytest.raises(ValueError, match="need mine_teacher"):
        parse_config(["--model_name_or_path", "m", "--ir_data", str(CISI), "--mine_relative_margin", "0.1"])
    with pytest.raises(ValueError, match="mine_retriever must be one of"):
        parse_config(["--model_name_or_path", "m", "--ir_data", str(CISI), "--mine_retriever", "colbert"])


def test_faiss_search_finds_what_exact_search_finds(cisi_slice, slice_index):
    import copy

    queries = {q: cisi_slice.queries[q] for q in cisi_slice.judged_queries()}
    exact = slice_index.search(queries, 10)
    index = copy.copy(slice_index)
    index.faiss_index = index._faiss_index()  # the index large corpora get, on the same embeddings
    approximate = index.search(queries, 10)
    overlap = sum(len(set(exact[q]) & set(approximate[q])) for q in queries) / (10 * len(queries))
    assert overlap >= 0.95
    for q in queries:  # the scores are the same cosine similarities
        for d in set(exact[q]) & set(approximate[q]):
            assert approximate[q][d] == pytest.approx(exact[q][d], abs=1e-5)

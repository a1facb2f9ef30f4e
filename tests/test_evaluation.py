"""Evaluation during training and `rerankforge-eval` report the same ranking metrics for the same model."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, write_jsonl
from test_cross_encoder_training import make_config, toy_records

from rerankforge.data_tools.ir_data import load_beir
from rerankforge.data_tools.retrieval import read_trec_run
from rerankforge.trainer.eval_cli import main as eval_main
from rerankforge.trainer.evaluation import RerankEvalSet


@pytest.fixture(scope="module")
def beir_slice(tmp_path_factory):
    """A small real BEIR folder: 12 judged CISI queries, their relevant documents and 80 others."""
    cisi = load_beir(SHARED_DATA / "cisi", "test")
    queries = cisi.judged_queries()[:12]
    docs = sorted({d for q in queries for d in cisi.relevant(q)} | set(list(cisi.corpus)[:80]), key=int)
    folder = tmp_path_factory.mktemp("cisi-slice")
    raw = {
        json.loads(line)["_id"]: line
        for line in (SHARED_DATA / "cisi" / "corpus.jsonl").read_text().splitlines()
    }
    (folder / "corpus.jsonl").write_text("".join(raw[d] + "\n" for d in docs))
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": cisi.queries[q]}) + "\n" for q in queries)
    )
    (folder / "qrels").mkdir()
    rows = [f"{q}\t{d}\t1\n" for q in queries for d in sorted(cisi.relevant(q), key=int)]
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(rows))
    return folder


def eval_config(tmp_path, tiny_bert_dir, beir_slice, **overrides):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(16))
    settings = dict(
        eval_data=str(beir_slice), eval_split="test", eval_top_k=20, per_device_eval_batch_size=16
    )
    settings.update(overrides)
    return make_config(tmp_path, tiny_bert_dir, data, **settings)


def build_with_eval(config):
    from rerankforge.data_tools import load_train_dataset
    from rerankforge.trainer.families import build_trainer
    from rerankforge.trainer.training_run import prepare_data

    eval_set = prepare_data(config).eval_set
    records = load_train_dataset(config.data.train_data, config.training.train_group_size)
    return build_trainer(config.training, records, eval_set), eval_set


def test_trainer_evaluate_reports_ranking_metrics_and_loss(tmp_path, tiny_bert_dir, beir_slice):
    trainer, eval_set = build_with_eval(eval_config(tmp_path, tiny_bert_dir, beir_slice))
    metrics = trainer.evaluate()
    for key in ("eval_ndcg@10", "eval_mrr@10", "eval_recall@20", "eval_loss"):
        assert key in metrics and 0 <= metrics[key] < 100
    assert len(eval_set.pairs()) == 12 * 20

    # the same model through the inference path gives the same metrics
    trainer.save_model(str(tmp_path / "saved"))
    from rerankforge.inference import Reranker

    pairs = eval_set.pairs()
    scores = Reranker.from_pretrained(str(tmp_path / "saved"), device="cpu").compute_score(
        eval_set.texts(pairs)
    )
    run = eval_set.run_from_scores(pairs, scores)
    assert eval_set.metrics(run)["ndcg@10"] == pytest.approx(metrics["eval_ndcg@10"], abs=1e-6)
    assert eval_set.listwise_loss(run) == pytest.approx(metrics["eval_loss"], abs=1e-5)
    # and by hand from those scores (binary gains; ties as trec_eval breaks them, larger doc id first)
    ndcg, reciprocal_rank, recall = [], [], []
    for query_id, judged in eval_set.qrels.items():
        relevant = {d for d, r in judged.items() if r > 0}
        order = sorted(run[query_id], key=lambda d, docs=run[query_id]: (docs[d], d), reverse=True)
        hits = [d in relevant for d in order]
        dcg = sum(1 / math.log2(rank + 2) for rank, hit in enumerate(hits[:10]) if hit)
        ndcg.append(dcg / sum(1 / math.log2(rank + 2) for rank in range(min(10, len(relevant)))))
        reciprocal_rank.append(1 / (hits.index(True) + 1) if True in hits[:10] else 0.0)
        recall.append(sum(hits) / len(relevant))
    assert metrics["eval_ndcg@10"] == pytest.approx(statistics.fmean(ndcg), abs=1e-6)
    assert metrics["eval_mrr@10"] == pytest.approx(statistics.fmean(reciprocal_rank), abs=1e-6)
    assert metrics["eval_recall@20"] == pytest.approx(statistics.fmean(recall), abs=1e-6)


def test_without_the_pass_before_training_the_table_still_has_the_first_stage(
    tmp_path, tiny_bert_dir, beir_slice, monkeypatch
):
    """`evaluate_before_training: false` (the default recipe) skips the untrained model's pass, not BM25's row:
    the first stage costs no model call."""
    from transformers import Trainer

    from rerankforge.trainer.training_run import train

    passes = []
    evaluate = Trainer.evaluate

    def counted(self, *args, **kwargs):
        passes.append(self.state.global_step)
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", counted)
    config = eval_config(
        tmp_path, tiny_bert_dir, beir_slice, max_steps=2, eval_strategy="no", evaluate_before_training=False
    )
    out = train(config)
    assert passes == [2]  # the final model's pass only
    rows = json.loads((out / "eval_before_after.json").read_text())
    assert list(rows) == ["BM25 (first stage)", "reranker after training"]
    first_stage = RerankEvalSet.from_dataset(load_beir(beir_slice, "test"), top_k=20).first_stage_metrics()
    assert rows["BM25 (first stage)"]["ndcg@10"] == pytest.approx(first_stage["ndcg@10"])
    assert "| BM25 (first stage) |" in (out / "eval_table.md").read_text()


def test_evaluation_and_the_saved_model_read_longer_passages_than_training(
    tmp_path, tiny_bert_dir, beir_slice
):
    """Training cuts passages to 8 tokens; evaluation, `predict` and inference read 120 (CISI abstracts)."""
    cisi = load_beir(beir_slice, "test")
    abstracts = list(cisi.corpus.values())
    records = [
        {"query": cisi.queries[q], "pos": [abstracts[i]], "neg": abstracts[i + 1 : i + 4]}
        for i, q in enumerate(cisi.judged_queries())
    ]
    data = write_jsonl(tmp_path / "long.jsonl", records)
    config = eval_config(
        tmp_path,
        tiny_bert_dir,
        beir_slice,
        train_data=[str(data)],
        passage_max_len=8,
        inference_passage_max_len=120,
    )
    trainer, eval_set = build_with_eval(config)
    metrics = trainer.evaluate()  # as in `make train`: evaluation comes first, then the training loader
    eval_width = next(iter(trainer.get_eval_dataloader()))["input_ids"].shape[1]
    test_width = next(iter(trainer.get_test_dataloader(trainer.eval_dataset)))["input_ids"].shape[1]
    train_width = next(iter(trainer.get_train_dataloader()))["input_ids"].shape[1]
    assert train_width == 16 + 8  # every abstract is longer than 8 tokens
    assert eval_width == test_width == 16 + 120  # the longest pairs come first and fill the whole budget
    trainer.save_model(str(tmp_path / "saved"))

    from rerankforge.inference import Reranker
    from rerankforge.inference.modeling.spec import RerankerSpec

    spec = RerankerSpec.load(tmp_path / "saved")
    assert (spec.query_max_len, spec.passage_max_len, spec.max_length) == (16, 120, 136)
    pairs = eval_set.pairs()
    scores = Reranker.from_pretrained(str(tmp_path / "saved"), device="cpu").compute_score(
        eval_set.texts(pairs)
    )
    run = eval_set.run_from_scores(pairs, scores)
    assert eval_set.listwise_loss(run) == pytest.approx(metrics["eval_loss"], abs=1e-5)
    assert eval_set.metrics(run)["ndcg@10"] == pytest.approx(metrics["eval_ndcg@10"], abs=1e-6)


def test_inference_passage_max_len_zero_means_the_training_length_and_negative_is_refused(
    tmp_path, tiny_bert_dir, beir_slice
):
    assert (
        eval_config(tmp_path, tiny_bert_dir, beir_slice, passage_max_len=24).training.scoring_passage_max_len
        == 24
    )
    with pytest.raises(ValueError, match="inference_passage_max_len must be 0"):
        eval_config(tmp_path, tiny_bert_dir, beir_slice, inference_passage_max_len=-1)


def test_best_model_and_early_stopping_work_on_eval_ndcg(tmp_path, tiny_bert_dir, beir_slice):
    from safetensors.torch import load_file
    from transformers import EarlyStoppingCallback

    config = eval_config(
        tmp_path, tiny_bert_dir, beir_slice, num_train_epochs=3, eval_strategy="steps", eval_steps=2,
        save_strategy="steps", save_steps=2, load_best_model_at_end=True, metric_for_best_model="ndcg@10",
        greater_is_better=True, learning_rate=5e-3,
    )  # fmt: skip
    trainer, _ = build_with_eval(config)
    trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=1))
    trainer.train()
    state = trainer.state
    evals = {entry["step"]: entry["eval_ndcg@10"] for entry in state.log_history if "eval_ndcg@10" in entry}
    assert state.global_step == max(evals) < state.max_steps  # stopped at an evaluation, before the last step
    best_step = max(evals, key=evals.get)
    assert best_step < state.global_step  # the stopping evaluation did not improve on an earlier one
    out = Path(config.training.output_dir)
    assert Path(state.best_model_checkpoint) == out / f"checkpoint-{best_step}"
    # the weights at the end are the best checkpoint's, not those of the last step (saved there as well)
    live = trainer.model.state_dict()
    best = load_file(out / f"checkpoint-{best_step}" / "model.safetensors")
    last = load_file(out / f"checkpoint-{state.global_step}" / "model.safetensors")
    assert best.keys() == last.keys() and best.keys() <= live.keys()
    assert all(torch.equal(live[name], tensor) for name, tensor in best.items())
    assert not all(torch.equal(live[name], tensor) for name, tensor in last.items())


def test_eval_listwise_loss_is_the_softmax_mass_on_relevant_candidates():
    eval_set = RerankEvalSet(
        {"q": "x"}, {"a": "a", "b": "b"}, {"q": {"a": 1.0, "b": 0.0}}, {"q": {"b": 1}}, 2
    )
    import math

    expected = -math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(2.0)))
    assert eval_set.listwise_loss({"q": {"a": 2.0, "b": 0.5}}) == pytest.approx(expected)


def test_eval_command_prints_the_table_and_writes_json_and_runs(tmp_path, tiny_bert_dir, beir_slice, capsys):
    import evaluate

    from rerankforge.data_tools.rerank_metric import MODULE_DIR

    out = tmp_path / "eval"
    code = eval_main(["--model", str(tiny_bert_dir), "--data", str(beir_slice), "--split", "test",
                      "--top-k", "30", "--device", "cpu", "--output", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| BM25 |" in printed and "| reranker |" in printed and "Recall@30" in printed
    result = json.loads((out / "metrics.json").read_text())
    assert result["queries"] == 12 and result["pairs"] == 12 * 30
    assert result["reranker_metrics"]["queries_per_second"] > 0
    assert sum(result["queries_vs_first_stage"].values()) == 12
    # the evaluate module on the written run gives the command's numbers
    run = read_trec_run(out / "reranked.run")
    flat = [(q, d, s) for q in run for d, s in run[q].items()]
    qrels = load_beir(beir_slice, "test").qrels
    module = evaluate.load(MODULE_DIR).compute(
        predictions=[s for *_, s in flat], query_ids=[q for q, *_ in flat], doc_ids=[d for _, d, _ in flat],
        qrels=qrels, k=30,
    )  # fmt: skip
    for key in ("ndcg@10", "mrr@10", "recall@30"):
        assert module[key] == pytest.approx(result["reranker_metrics"][key], abs=1e-5)
    assert read_trec_run(out / "first_stage.run").keys() == run.keys()


def test_eval_command_default_folder_names_data_split_and_depth(tmp_path, tiny_bert_dir, beir_slice):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    args = [
        "--model",
        str(model),
        "--data",
        str(beir_slice),
        "--top-k",
        "5",
        "--device",
        "cpu",
        "--dtype",
        "bfloat16",
    ]
    assert eval_main(args) == 0
    result = json.loads((model / "eval" / f"{beir_slice.name}-test-top5" / "metrics.json").read_text())
    assert result["dtype"] == "bfloat16" and result["pairs"] == 12 * 5


def test_score_command_adds_the_teachers_scores(tmp_path, tiny_bert_dir):
    from rerankforge.data_tools.cli import main as data_main
    from rerankforge.inference import Reranker

    source = write_jsonl(tmp_path / "in.jsonl", toy_records(3, n_negatives=2))
    out = tmp_path / "scored.jsonl"
    assert (
        data_main(["score", str(source), str(out), "--teacher", str(tiny_bert_dir), "--device", "cpu"]) == 0
    )
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    teacher = Reranker.from_pretrained(str(tiny_bert_dir), device="cpu")
    for record in scored:
        assert record["pos_scores"] == pytest.approx(
            teacher.compute_score([[record["query"], p] for p in record["pos"]]), abs=1e-5
        )
        assert record["neg_scores"] == pytest.approx(
            teacher.compute_score([[record["query"], n] for n in record["neg"]]), abs=1e-5
        )
    assert data_main(["check", str(out)]) == 0
    capped = tmp_path / "capped.jsonl"  # --max-length caps each pair as compute_score(max_length=...) does
    command = ["score", str(source), str(capped), "--teacher", str(tiny_bert_dir), "--device", "cpu"]
    assert data_main([*command, "--max-length", "12", "--dtype", "float32"]) == 0
    record = json.loads(capped.read_text().splitlines()[0])
    pairs = [[record["query"], p] for p in record["pos"] + record["neg"]]
    assert record["pos_scores"] + record["neg_scores"] == pytest.approx(
        teacher.compute_score(pairs, max_length=12), abs=1e-5
    )
    assert teacher.compute_score(pairs, max_length=12) != pytest.approx(
        teacher.compute_score(pairs), abs=1e-5
    )


def test_score_command_takes_a_token_budget_and_refuses_one_below_a_pair(tmp_path, tiny_bert_dir, capsys):
    from rerankforge.data_tools.cli import main as data_main

    source = write_jsonl(tmp_path / "in.jsonl", toy_records(3, n_negatives=2))
    command = ["score", str(source), "--teacher", str(tiny_bert_dir), "--device", "cpu"]
    assert data_main([command[0], command[1], str(tmp_path / "a.jsonl"), *command[2:]]) == 0
    budget = [command[0], command[1], str(tmp_path / "b.jsonl"), *command[2:], "--max-batch-tokens", "600"]
    assert data_main(budget) == 0
    plain = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    budgeted = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    for a, b in zip(plain, budgeted, strict=True):
        assert a["pos_scores"] + a["neg_scores"] == pytest.approx(b["pos_scores"] + b["neg_scores"], abs=1e-5)
    too_small = [command[0], command[1], str(tmp_path / "c.jsonl"), *command[2:], "--max-batch-tokens", "100"]
    assert data_main(too_small) == 2
    assert "max_batch_tokens=100 is less than one pair" in capsys.readouterr().err
    assert not (tmp_path / "c.jsonl").exists()

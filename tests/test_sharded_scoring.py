"""`rerankforge-data score` and `rerankforge-eval` under `accelerate launch` with 2 CPU processes write what one
process writes; the shard split gives every pair to one process and puts the scores back in input order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_DATA, write_jsonl

from rerankforge.inference.sharded_scoring import (
    Launch,
    compute_score_sharded,
    merge_shards,
    pair_length,
    shard_indices,
)

pytestmark = pytest.mark.distributed
TIMING_KEYS = {"queries_per_second", "pairs_per_second"}


def launch_two(module: str, *args: str) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``python -m module args`` with the recipe's 2-process gloo config."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "recipes" / "accelerate" / "cpu_ddp.yaml"), "-m", module, *args,
    ]  # fmt: skip
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def varied_records(n_queries: int = 8) -> list[dict]:
    """Pairs of very different lengths, so a split by count alone would be unbalanced."""
    words = ["apple", "river", "stone", "cloud", "music", "paper", "garden", "window"]
    records = []
    for i in range(n_queries):
        word = words[i % len(words)]
        filler = " ".join(words[: 1 + (i * 3) % 8]) * (1 + i % 4)
        records.append(
            {
                "query": f"where is the {word}" + " really" * (i % 3),
                "pos": [f"the {word} is here, {word} indeed. {filler}"],
                "neg": [f"the {words[(i + k) % 8]} is there {filler[: 9 * k]}" for k in range(1, 4)],
            }
        )
    return records


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class LengthScorer:
    """A stand-in reranker: the score is the pair's length; it records what it was asked to score."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def compute_score(self, pairs, batch_size=None, max_length=None, show_progress=None) -> list[float]:
        self.calls.append(len(pairs))
        return [float(pair_length(p)) for p in pairs]


def test_the_shard_split_gives_every_pair_once_balanced_and_merges_in_input_order(monkeypatch):
    pairs = [(f"q{i}", "x" * ((i * 37) % 101)) for i in range(50)]
    lengths = [pair_length(p) for p in pairs]
    for processes in (2, 3, 7):
        shards = shard_indices(lengths, processes)
        assert sorted(i for shard in shards for i in shard) == list(range(len(pairs)))
        totals = [sum(lengths[i] for i in shard) for shard in shards]
        assert max(totals) - min(totals) <= max(lengths)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        # each process scores its shard; the merge restores input order
        scorer = LengthScorer()
        merged = merge_shards([(s, scorer.compute_score([pairs[i] for i in s])) for s in shards], len(pairs))
        assert merged == [float(n) for n in lengths]
    assert shard_indices([], 2) == [[], []]
    with pytest.raises(ValueError, match="scored by no process"):
        merge_shards([([0, 2], [1.0, 2.0])], 3)
    with pytest.raises(ValueError, match="scored by two processes"):
        merge_shards([([0, 1], [1.0, 2.0]), ([1], [3.0])], 2)

    # one process: one plain compute_score call, no process group
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    scorer = LengthScorer()
    assert compute_score_sharded(scorer, pairs, batch_size=4) == [float(n) for n in lengths]
    assert scorer.calls == [len(pairs)] and not torch.distributed.is_initialized()
    assert compute_score_sharded(scorer, pairs, Launch()) == [float(n) for n in lengths]


def test_the_main_process_merges_the_gathered_shards_and_refuses_different_pair_lists(monkeypatch):
    """The gather, faked in one process: rank 0's call sees its own shard and rank 1's."""
    from rerankforge.inference import sharded_scoring

    pairs = [(f"query {i}", "passage " * (i % 5)) for i in range(9)]
    rank0 = Launch(num_processes=2, process_index=0, device=torch.device("cpu"))
    rank1_indices = shard_indices([pair_length(p) for p in pairs], 2)[1]
    rank1_scores = [float(pair_length(pairs[i])) for i in rank1_indices]

    def fake_gather(fingerprint_of_rank1):
        return lambda mine: [*mine, (fingerprint_of_rank1 or mine[0][0], rank1_indices, rank1_scores)]

    monkeypatch.setattr(sharded_scoring, "gather_object", fake_gather(None))
    scorer = LengthScorer()
    assert compute_score_sharded(scorer, pairs, rank0) == [float(pair_length(p)) for p in pairs]
    assert scorer.calls == [5]  # rank 0 scored its shard only
    monkeypatch.setattr(sharded_scoring, "gather_object", fake_gather("another list"))
    with pytest.raises(RuntimeError, match="different pair lists"):
        compute_score_sharded(scorer, pairs, rank0)


def test_score_with_two_processes_writes_what_one_process_writes(tmp_path, tiny_bert_dir):
    from rerankforge.data_tools.cli import main as data_main

    source = write_jsonl(tmp_path / "in.jsonl", varied_records())
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    common = ["--teacher", str(tiny_bert_dir), "--batch-size", "4"]
    assert data_main(["score", str(source), str(one), *common, "--device", "cpu"]) == 0
    # an explicit device other than the process's own is ignored with a warning under a launch
    result = launch_two(
        "rerankforge.data_tools", "score", str(source), str(two), *common, "--device", "cuda:0"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "--device cuda:0 is ignored under a launch of 2 processes" in result.stderr
    assert result.stdout.count("queries scored by") == 1  # the main process alone reports
    expected, got = read_jsonl(one), read_jsonl(two)
    assert len(got) == len(expected) == 8
    for a, b in zip(expected, got, strict=True):
        assert {k: v for k, v in a.items() if not k.endswith("_scores")} == {
            k: v for k, v in b.items() if not k.endswith("_scores")
        }
        for key in ("pos_scores", "neg_scores"):
            assert b[key] == pytest.approx(a[key], abs=1e-5)


def test_a_bad_file_ends_every_process_with_the_same_error_and_writes_nothing(tmp_path, tiny_bert_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "pos": []}) + "\n")
    out = tmp_path / "out.jsonl"
    result = launch_two(
        "rerankforge.data_tools", "score", str(bad), str(out), "--teacher", str(tiny_bert_dir)
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.count("error: ") == 2 and not out.exists()  # both processes, before the teacher


@pytest.fixture(scope="module")
def small_beir(tmp_path_factory) -> Path:
    """6 judged CISI queries, their relevant documents and 30 others: a BEIR folder for a fast eval."""
    from rerankforge.data_tools.ir_data import load_beir

    cisi = load_beir(SHARED_DATA / "cisi", "test")
    queries = cisi.judged_queries()[:6]
    docs = sorted({d for q in queries for d in cisi.relevant(q)} | set(list(cisi.corpus)[:30]), key=int)
    folder = tmp_path_factory.mktemp("cisi-small")
    write_jsonl(folder / "corpus.jsonl", [{"_id": d, "title": "", "text": cisi.corpus[d]} for d in docs])
    write_jsonl(folder / "queries.jsonl", [{"_id": q, "text": cisi.queries[q]} for q in queries])
    rows = [f"{q}\t{d}\t1\n" for q in queries for d in sorted(cisi.relevant(q), key=int)]
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(rows))
    return folder


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def test_eval_with_two_processes_equals_one_process(tmp_path, tiny_bert_dir, small_beir):
    from rerankforge.data_tools.retrieval import read_trec_run
    from rerankforge.trainer.eval_cli import main as eval_main

    common = ["--model", str(tiny_bert_dir), "--data", str(small_beir), "--top-k", "8", "--batch-size", "8"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert eval_main([*common, "--device", "cpu", "--output", str(one)]) == 0
    result = launch_two("rerankforge.trainer.eval_cli", *common, "--output", str(two))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("written: ") == 1
    a, b = (json.loads((folder / "metrics.json").read_text()) for folder in (one, two))
    assert (a.pop("processes"), b.pop("processes")) == (1, 2)
    ra, rb = a.pop("reranker_metrics"), b.pop("reranker_metrics")
    assert rb["queries_per_second"] > 0
    assert without_timing(rb) == pytest.approx(without_timing(ra), abs=1e-9)
    assert b.pop("calibration") == pytest.approx(
        a.pop("calibration"), abs=1e-6
    )  # ECE, Brier of the same scores
    assert a == b and a["pairs"] == 6 * 8
    assert (one / "first_stage.run").read_bytes() == (two / "first_stage.run").read_bytes()
    run_a, run_b = (read_trec_run(folder / "reranked.run") for folder in (one, two))
    assert run_a.keys() == run_b.keys()
    for query in run_a:
        assert list(run_a[query]) == list(run_b[query])  # the same ranking
        assert list(run_b[query].values()) == pytest.approx(list(run_a[query].values()), abs=1e-5)

"""The benchmarks' pair builder and result writers on a small slice, so `make bench` cannot rot unnoticed
(nothing here is timed)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA

sys.path.insert(0, str(REPO / "benchmarks"))

import inference_speed  # noqa: E402
from machine import SPEED_FLAGS, append_results, describe_machine  # noqa: E402

SQUAD = SHARED_DATA / "squad-v1.1" / "dev-v1.1.json"


@pytest.mark.skipif(not SQUAD.is_file(), reason="needs ../shared/data/squad-v1.1")
def test_pairs_are_real_held_out_questions_with_bm25_candidates():
    pairs = inference_speed.build_pairs(queries=3, top_k=4, llm_pairs=5, data=SQUAD)
    cross = pairs["cross_encoder"]
    assert len(cross) == 12
    assert all(isinstance(q, str) and isinstance(p, str) and q and p for q, p in cross)
    assert len({q for q, _ in cross}) == 3  # each question with its own 4 candidates
    assert 0 < len(pairs["llm"]) <= 5 and all(pair in cross for pair in pairs["llm"])
    again = inference_speed.build_pairs(queries=3, top_k=4, llm_pairs=5, data=SQUAD)
    assert again == pairs  # the same pairs file for every tool and every run


def test_tables_give_medians_ratios_and_exactness():
    speeds = {
        ("rerankforge", 32): [40.0, 50.0, 45.0],
        ("rerankforge-onnx-int8", 32): [100.0, 90.0, 95.0],
        ("flagembedding", 32): [30.0, 20.0, 25.0],
    }
    diffs = {("rerankforge", 32): 0.0, ("rerankforge-onnx-int8", 32): 0.3, ("flagembedding", 32): 5e-6}
    tools = ["rerankforge", "rerankforge-onnx-int8", "flagembedding"]
    table = inference_speed.speed_table(speeds, diffs, tools, [32])
    assert "| 32 | rerankforge | 45.0 | 40.0 | 50.0 | 0.0e+00 |" in table
    assert "| 32 | flagembedding | 25.0 | 20.0 | 30.0 | 5.0e-06 |" in table
    ratios = inference_speed.ratio_table(
        speeds, diffs, tools[:2], tools[2:], [32], ndcg={"rerankforge": 0.86, "rerankforge-onnx-int8": 0.8612}
    )
    assert "| 32 | rerankforge | exact | 1.80x | 0.8600 |" in ratios
    assert "| 32 | rerankforge-onnx-int8 | differ (0.3) | 3.80x | 0.8612 |" in ratios


def test_results_are_appended_with_date_machine_and_command(tmp_path):
    results = tmp_path / "RESULTS.md"
    append_results(results, "First", "python benchmarks/x.py --a 1", "| a |\n|---|\n| 1 |", "a note")
    append_results(results, "Second", "python benchmarks/y.py", "| b |")
    text = results.read_text()
    assert text.index("## First") < text.index("## Second")
    for expected in (
        "- date: ",
        "- machine: ",
        "cores; GPU:",
        "- CPU: ",
        "- load at the start: ",
        "- versions: python",
        "`python benchmarks/x.py --a 1`",
    ):
        assert expected in text
    assert "a note" in text


@pytest.mark.skipif(
    not Path("/proc/cpuinfo").is_file() or "vendor_id" not in Path("/proc/cpuinfo").read_text(),
    reason="reads an x86 /proc/cpuinfo (Linux)",
)
def test_the_machine_record_tells_cpus_of_one_name_apart(tmp_path):
    """Vendor, family/model/stepping, the speed flags, clock, cores and the load before the run, as /proc shows
    them on this machine, in the JSON record and in the two lines each RESULTS.md section gets."""
    machine = describe_machine()
    first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}
    assert machine["cpu_vendor"] == fields["vendor_id"]
    assert machine["cpu_family"] == int(fields["cpu family"]) and machine["cpu_model_number"] == int(
        fields["model"]
    )
    assert (
        machine["cpu_stepping"] == int(fields["stepping"])
        and machine["cpu_model_name"] == fields["model name"]
    )
    flags = set(fields["flags"].split())
    assert machine["cpu_flags"] == {flag: flag in flags for flag in SPEED_FLAGS}
    assert machine["cpu_mhz"] > 0 and machine["cores"] == os.cpu_count() >= machine["usable_cores"] >= 1
    assert machine["cpu_max_mhz"] is None or machine["cpu_max_mhz"] >= 100
    assert len(machine["load_at_start"]) == 3 and all(value >= 0 for value in machine["load_at_start"])
    assert isinstance(machine["busy_processes_at_start"], list)
    json.dumps(machine)  # gpu_bench.py writes it into its JSON results

    results = tmp_path / "RESULTS.md"
    append_results(results, "Run", "python benchmarks/x.py", "| a |")
    text = results.read_text()
    cpu = f"- CPU: {fields['vendor_id']} family {fields['cpu family']}, model {fields['model']}, stepping "
    assert cpu in text and f"{machine['cpu_mhz']:.0f} MHz now" in text
    listed = [flag for flag in SPEED_FLAGS if flag in flags]
    assert ", ".join(listed) in text if listed else "none of avx2" in text
    assert "(1, 5, 15 min)" in text and "running" in text.split("- load at the start: ")[1].splitlines()[0]


@pytest.mark.skipif(not SQUAD.is_file(), reason="needs ../shared/data/squad-v1.1")
def test_training_groups_have_enough_hard_negatives_and_never_the_positive(tmp_path):
    import json

    import training_speed

    lines = training_speed.write_training_groups(
        tmp_path / "train.jsonl", max_queries=12, negatives=8, seed=0
    )
    records = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(records) == lines and 0 < lines <= 12
    for record in records:
        assert len(record["neg"]) >= training_speed.GROUP_SIZE - 1
        assert not set(record["pos"]) & set(record["neg"])


def test_training_results_table_gives_ratios_and_losses_side_by_side():
    import training_speed

    def run(seconds_per_step: float, losses: list[float]) -> dict:
        steps = len(losses)
        return {
            "step_times": [seconds_per_step * (i + 1) for i in range(steps)],
            "losses": losses,
            "peak_rss_mb": 1000.0,
            "rows_per_batch": [32] * steps,
            "padded_lengths": [256] * steps,
            "real_tokens": [5000] * steps,
            "attn_implementation": "sdpa",
        }

    runs = {"rerankforge": [run(2.0, [2.08, 2.07, 2.05])], "flagembedding": [run(4.0, [2.09, 2.06, 2.04])]}
    table = training_speed.results_table(runs, warmup_steps=1)
    assert "| rerankforge | 2.00 | 1000 | 1.00x |" in table  # 4 groups per 2 s
    assert "| flagembedding | 1.00 | 1000 | 2.00x |" in table
    assert "| 1 (warm-up) | 2.0800 | 2.0900 |" in table and "| 3 | 2.0500 | 2.0400 |" in table


def test_the_loss_comparison_table_gives_every_run_bm25_and_the_seed_spread(tmp_path):
    import json

    import loss_comparison

    runs = [loss_comparison.Run("ce", "grouped_cross_entropy"), loss_comparison.Run("ce43", "grouped_cross_entropy", seed=43),
            loss_comparison.Run("kl", "kl", teacher=True)]  # fmt: skip
    for i, run in enumerate(runs):
        folder = tmp_path / run.label
        (folder / "cisi").mkdir(parents=True)
        (folder / "eval_results.json").write_text(json.dumps({"eval_ndcg@10": 0.80 + i / 100}))
        (folder / "eval_before_after.json").write_text(json.dumps({"BM25 (first stage)": {"ndcg@10": 0.7}}))
        metrics = {"reranker_metrics": {"ndcg@10": 0.30 + i / 100}, "first_stage_metrics": {"ndcg@10": 0.4}}
        (folder / "cisi" / "metrics.json").write_text(json.dumps(metrics))
    rows, spread = loss_comparison.table(runs, tmp_path)
    assert "| ce | `grouped_cross_entropy` | - | 42 | 0.8000 | 0.3000 |" in rows
    questions = f"{loss_comparison.TEACHER_QUESTIONS:,}"  # what the recipe's steps read
    assert (
        f"| kl | `kl` | teacher: the first run's model on {questions} questions | 42 | 0.8200 | 0.3200 |"
        in rows
    )
    assert "| BM25 (first stage) | - | - | - | 0.7000 | 0.4000 |" in rows
    assert (
        "`grouped_cross_entropy`, 2 seeds (42, 43), held-out SQuAD: 0.8000, 0.8100; mean 0.8050, range 0.0100"
        in spread
    )


@pytest.mark.skipif(not SQUAD.is_file(), reason="needs ../shared/data/squad-v1.1")
def test_the_gpu_benchmark_smoke_run_fills_every_section_and_table(tmp_path):
    """`gpu_bench.py --smoke`: the GPU benchmark's own code on the CPU with tiny models (about 40 s), so the
    script that runs on a lent GPU cannot rot here."""
    import json
    import os
    import subprocess

    import gpu_scoring

    out, results = tmp_path / "bench-gpu.json", tmp_path / "RESULTS-gpu.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_bench.py"), "--smoke", "--out", str(out),
               "--results", str(results)]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["incomplete"] == [] and data["settings"]["mode"] == "smoke"
    shapes = ("minilm-l6", "bge-reranker-base", "bge-reranker-large")
    tools = (gpu_scoring.RERANKFORGE, gpu_scoring.SENTENCE_TRANSFORMERS, gpu_scoring.REFERENCE)
    table = results.read_text()
    for shape in shapes:
        scoring = data["scoring"][shape]
        assert scoring["pairs"] == 64 and scoring["real_tokens"] > 0 and scoring["forward_flops"] > 0
        assert set(tools) <= set(scoring["tools"])
        for tool, row in scoring["tools"].items():
            assert row["pairs_per_s"] > 0 and row["tflops"] > 0, (shape, tool)
            assert row["max_abs_diff_to_reference"] < 1e-4, (shape, tool)  # fp32: the tools score alike
            assert f"| {shape} ({scoring['shape']}) | {tool} | " in table
    training = data["cross_encoder_training"]
    assert training["steps_per_s"] > 0 and training["peak_memory_mb"] > 0 and training["timed_steps"] == 1
    variants = list(data["llm_lora"]["variants"].values())
    assert {(v["way"], v["checkpointing"]) for v in variants} == {
        (way, on) for way in ("rerankforge", "flagembedding") for on in (True, False)
    }
    for variant in variants:
        assert (
            variant["steps_per_s"] > 0
            and variant["peak_memory_mb"] > 0
            and variant["trainable_parameters"] > 0
        )
    assert "| rerankforge (last position's Yes logit" in table and "| FlagEmbedding (all-vocabulary" in table
    assert "- command: `python benchmarks/gpu_bench.py --smoke" in table
    # like for like: both tools compiled alike in their own part; the same ids for the long pairs
    compiled = data["scoring_compiled"]["bge-reranker-base"]
    for tool in (gpu_scoring.RERANKFORGE, gpu_scoring.SENTENCE_TRANSFORMERS):
        assert compiled["tools"][tool + gpu_scoring.COMPILED]["max_abs_diff_to_reference"] < 1e-4
        assert f"| bge-reranker-base ({compiled['shape']}) | {tool + gpu_scoring.COMPILED} | " in table
    for scoring in (*data["scoring"].values(), compiled):
        assert scoring["distinct_passages"] == scoring["pairs"]  # the headline: no passage repeats
        assert set(scoring["truncation"]["ids_differ_from_plain_loop"].values()) == {0}
        assert scoring["rounds_done"] == 1 and not scoring["stopped_at_deadline"]
    repeated = data["scoring_repeated"]["minilm-l6"]
    assert repeated["kind"] == "plain" and set(tools) <= set(repeated["tools"])
    # every part was appended as it ended, then the notes
    lines = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [r["part"] for r in lines] == ["start", "set-up", *lines[0]["parts"], "end"]
    assert all(r["status"] == "done" for r in lines[1:-1]) and table.rstrip().endswith("budget.")


def test_quality_table_gives_each_arms_mean_and_range_over_seeds():
    import training_quality

    rows = [
        {"arm": arm, "seed": seed, "train s": 60.0, "squad nDCG@10": squad, "cisi nDCG@10": cisi,
         "squad BM25": 0.84, "cisi BM25": 0.39}
        for arm, seed, squad, cisi in [("b", 1, 0.80, 0.30), ("a", 1, 0.85, 0.25), ("a", 2, 0.87, 0.29)]
    ]  # fmt: skip
    table = training_quality.table(rows)
    assert "| a | 2 | 0.8600 (0.0200) | 0.2700 (0.0400) |" in table
    assert "| b | 1 | 0.8000 (0.0000) | 0.3000 (0.0000) |" in table
    assert table.index("| a | 1 | 0.8500") < table.index("| b | 1 | 0.8000")  # rows sorted by arm


def test_few_label_arms_that_mine_alike_share_one_teacher_pass(tmp_path, monkeypatch):
    """Arms 4 and 5 mine with the same options: per seed the teacher scores once, and arm 5 trains on arm 4's
    file (and the trainer reads that command as distillation from the file's scores, with nothing to mine);
    arm 2 reuses arm 1's BM25 file; another seed mines for itself."""
    import argparse

    import training_quality

    from rerankforge.trainer.cli import parse_config

    commands = []

    def fake_train(args, root, out, seed, queries, options):  # records the command, writes the mined file
        commands.append((out.name, options))
        (out / "data").mkdir(parents=True)
        (out / "data" / "train.jsonl").write_text("")
        return 1.0

    monkeypatch.setattr(training_quality, "train_recipe_arm", fake_train)
    monkeypatch.setattr(training_quality, "evaluate", lambda *args: {})
    args = argparse.Namespace(
        teacher="T", seeds=[42, 43], arms=["1", "2", "4", "5"], queries=800, cisi_top_k=50
    )
    rows = training_quality.train_few_labels(args, tmp_path)
    by_run = dict(commands)
    assert list(by_run) == [f"few-{arm}-{seed}" for seed in (42, 43) for arm in "1245"]
    for seed in (42, 43):
        mined = {arm: str(tmp_path / f"few-{arm}-{seed}" / "data" / "train.jsonl") for arm in "14"}
        assert by_run[f"few-1-{seed}"] == []
        assert by_run[f"few-2-{seed}"] == [
            "--model_name_or_path", "T", "--learning_rate", "2e-5", "--train_data", mined["1"],
        ]  # fmt: skip
        assert (
            "--mine_teacher" in by_run[f"few-4-{seed}"] and "--mine_output_scores" in by_run[f"few-4-{seed}"]
        )
        assert by_run[f"few-5-{seed}"] == ["--distill_loss", "kl", "--train_data", mined["4"]]
    assert [row.get("data from") for row in rows[:4]] == [None, "1", None, "4"]

    config = parse_config([str(training_quality.RECIPE), *by_run["few-5-42"]])
    assert config.training.needs_teacher_scores and config.mining.mine_teacher is None
    assert config.data.train_data == [str(tmp_path / "few-4-42" / "data" / "train.jsonl")]


def test_the_loss_comparison_refuses_to_resume_runs_of_another_budget(tmp_path):
    import json

    import loss_comparison

    (tmp_path / "ce").mkdir()
    (tmp_path / "ce" / "trainer_state.json").write_text(json.dumps({"max_steps": 360}))
    if loss_comparison._RECIPE["max_steps"] != 360:
        with pytest.raises(SystemExit, match="trained 360 steps, the recipe now says"):
            loss_comparison.check_same_budget(tmp_path)
    (tmp_path / "ce" / "trainer_state.json").write_text(
        json.dumps({"max_steps": loss_comparison._RECIPE["max_steps"]})
    )
    loss_comparison.check_same_budget(tmp_path)  # the same budget resumes
    (tmp_path / "teacher_questions.jsonl").write_text("{}\n" * (loss_comparison.TEACHER_QUESTIONS + 1))
    with pytest.raises(SystemExit, match="questions, the recipe's budget reads"):
        loss_comparison.check_same_budget(tmp_path)


def test_flag_worker_takes_its_own_save_option_out_of_flagembeddings_command_line():
    from flag_train_worker import pop_option

    assert pop_option(["--a", "1", "--save-model-to", "d", "--b", "2"], "--save-model-to") == (
        ["--a", "1", "--b", "2"],
        "d",
    )
    assert pop_option(["--a", "1"], "--save-model-to") == (["--a", "1"], None)

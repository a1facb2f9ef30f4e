"""`benchmarks/gpu_bench.py` cannot waste a GPU lease: each part's result is on disk the moment it ends (a kill
keeps it), and a part stops at its own deadline. Nothing here needs a GPU; nothing is timed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import distributions
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO, SHARED_DATA

sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_bench  # noqa: E402
import gpu_measure  # noqa: E402
import gpu_scoring  # noqa: E402

SQUAD = SHARED_DATA / "squad-v1.1" / "dev-v1.1.json"


def json_lines(path: Path) -> list[dict]:
    """The whole lines written so far (a line being written is left out)."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


@pytest.mark.skipif(not SQUAD.is_file(), reason="needs ../shared/data/squad-v1.1")
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_gpu_bench_run_killed_after_its_first_part_keeps_that_parts_results(tmp_path, stop_signal):
    """The smoke run is killed as soon as its first part (set-up) is in the JSON lines: that part's line parses,
    its markdown row is there, and --out holds the results so far; SIGTERM also records the stop."""
    out, markdown = tmp_path / "bench-gpu.json", tmp_path / "RESULTS-gpu.md"
    lines = tmp_path / "bench-gpu.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_bench.py"), "--smoke", "--out", str(out),
               "--results", str(markdown)]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        give_up = time.monotonic() + 120
        while not any(r["part"] == gpu_bench.SETUP for r in json_lines(lines)):
            assert process.poll() is None, f"the run ended (exit {process.returncode}) before its first part"
            assert time.monotonic() < give_up, "no set-up line within 120 s"
            time.sleep(0.2)
        process.send_signal(stop_signal)
        returncode = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    records = json_lines(lines)
    assert records[0]["part"] == "start" and records[0]["settings"]["mode"] == "smoke"
    setup = next(r for r in records if r["part"] == gpu_bench.SETUP)
    assert setup["status"] == "done" and setup["result"]["pairs"] == 64 and setup["seconds"] > 0
    row = f"| {setup['result']['questions']} | {setup['result']['tokenizer_texts']} | {setup['result']['pairs']} |"
    text = markdown.read_text(encoding="utf-8")
    assert "## GPU speed" in text and row in text
    assert json.loads(out.read_text(encoding="utf-8"))["setup"] == setup["result"]
    assert not any(r["part"] == "end" for r in records)
    stops = [r for r in records if r["part"] == "stopped"]
    if stop_signal == signal.SIGTERM:
        assert returncode == 128 + signal.SIGTERM
        assert len(stops) == 1 and stops[0]["signal"] == "SIGTERM" and stops[0]["during"] != gpu_bench.SETUP
        assert "### Run stopped by SIGTERM" in text
        assert not list(tmp_path.glob("gpu-bench-*")), "the scratch folder is removed on SIGTERM"
    else:
        assert returncode == -signal.SIGKILL and not stops


def test_a_gpu_bench_set_up_failure_is_recorded_and_the_run_ends_with_its_notes(tmp_path):
    """No SQuAD: the set-up part fails; its error is in the JSON lines and the markdown, the other parts are
    recorded as not run, and the exit status says so (no traceback that loses the run)."""
    out, markdown = tmp_path / "bench-gpu.json", tmp_path / "RESULTS-gpu.md"
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import gpu_models; gpu_models.SQUAD_PATHS = (); "
        f"import gpu_bench; sys.exit(gpu_bench.main(['--smoke', '--out', {str(out)!r}, '--results', "
        f"{str(markdown)!r}]))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    records = json_lines(tmp_path / "bench-gpu.jsonl")
    assert [r["part"] for r in records] == ["start", gpu_bench.SETUP, "end"]
    assert records[1]["status"] == "failed" and "FileNotFoundError" in records[1]["result"]["error"]
    assert records[2]["incomplete"] == [f"{gpu_bench.SETUP} (failed: {records[1]['result']['error']})"]
    data = json.loads(out.read_text())
    assert data["complete"] and data["scoring"]["minilm-l6"] == {"not_run": "set-up failed"}
    text = markdown.read_text()
    assert "set-up: failed: FileNotFoundError" in text and "### Notes" in text


class Allows:
    """A deadline that lets ``count`` more rounds or steps start, whatever the clock says."""

    def __init__(self, count: int):
        self.count = count

    def fits(self, seconds: float) -> bool:
        self.count -= 1
        return self.count >= 0


def test_gpu_scoring_rounds_stop_at_the_deadline_after_the_first():
    calls: list[int] = []

    def scorer(pairs: list[list[str]]) -> list[float]:
        calls.append(len(pairs))
        return [0.0] * len(pairs)

    pairs = [["q", f"p{i}"] for i in range(6)]
    scorers = {"a": scorer, gpu_scoring.REFERENCE: scorer}
    device = gpu_scoring.torch.device("cpu")
    timing = gpu_scoring.time_scorers(scorers, pairs, 2, 3, device, Allows(1))
    assert timing.rounds_done == 2 and all(len(s) == 2 for s in timing.seconds.values())
    assert calls == [2, 2] + [6] * 4  # the warm-ups, then two rounds of both tools
    timing = gpu_scoring.time_scorers(scorers, pairs, 2, 3, device, Allows(0))
    assert timing.rounds_done == 1  # the first round runs whatever the deadline says
    rows = gpu_scoring.tool_rows(timing, len(pairs), flops=1e9, peak=None)
    assert rows["a"]["max_abs_diff_to_reference"] == 0 and rows["a"]["pairs_per_s"] > 0


def test_gpu_training_stops_after_the_warmup_and_one_timed_step_once_the_deadline_is_near():
    from gpu_training import StepDeadline, as_callback

    stop = StepDeadline(gpu_measure.Deadline(time.monotonic() - 1), warmup_steps=2)
    callback = as_callback(stop)
    control = SimpleNamespace(should_training_stop=False)
    for step in (1, 2):  # warm-up steps always run
        callback.on_step_end(None, SimpleNamespace(global_step=step), control)
        assert not control.should_training_stop
    callback.on_step_end(None, SimpleNamespace(global_step=3), control)
    assert control.should_training_stop and stop.stopped
    later = StepDeadline(gpu_measure.Deadline(time.monotonic() + 60), warmup_steps=1)
    assert not any(later.after_step(step) for step in range(1, 5))


def test_gpu_budget_gives_each_part_a_deadline_within_the_budget():
    budget = gpu_measure.Budget(100.0, start=time.monotonic() - 40)
    assert budget.allows(59) and not budget.allows(61)
    assert budget.deadline(10).left() == pytest.approx(10 * gpu_measure.PART_ALLOWANCE, abs=0.5)
    assert budget.deadline(50).left() == pytest.approx(60, abs=0.5)  # never past the budget's end
    assert budget.deadline(0).left() == pytest.approx(60, abs=0.5)  # no estimate: what is left
    assert "the part expects 70 s" in budget.skipped(70)["skipped"]
    start = gpu_measure.process_start()  # before reading the clock: the age of a long test process reads as 0
    assert 0 <= time.monotonic() - start <= gpu_measure.MAX_PLAUSIBLE_AGE_S


def test_gpu_bench_expected_times_fit_the_default_budget_with_the_imports():
    settings = gpu_bench.FULL
    names = [gpu_bench.SETUP, "scoring/minilm-l6", "scoring/bge-reranker-base", "scoring/bge-reranker-large",
             "cross-encoder-training", *[f"llm-lora/{i}" for i in range(4)],
             "scoring-compiled/bge-reranker-base", "scoring-repeated/minilm-l6"]  # fmt: skip
    expected = [gpu_bench.expected_seconds(settings, name) for name in names]
    assert all(seconds > 0 for seconds in expected)
    assert sum(expected) + 10 <= gpu_bench.parse_args([]).budget_s == 300


def test_a_stop_signal_that_arrives_while_a_part_is_written_waits_for_the_write(tmp_path):
    recorder = gpu_bench.Recorder(tmp_path / "b.json", tmp_path / "b.md", "run-1")
    stopped: list[int] = []
    recorder.on_stop = stopped.append
    part = gpu_bench.Part("p", "scoring", "P", ("p",), lambda deadline: {}, lambda result: "| row |")
    with recorder.writing():
        recorder.stop(signal.SIGTERM, 5.0)
        assert not stopped  # deferred
        gpu_bench.append_durably(recorder.markdown, gpu_bench.part_markdown(part, {"x": 1}, 2.0))
        recorder.line({"part": "p", "result": {"x": 1}})
    assert stopped == [signal.SIGTERM]
    records = json_lines(recorder.lines)
    assert [r["part"] for r in records] == ["p", "stopped"] and records[1]["during"] == "between parts"
    assert records[0]["run"] == "run-1"
    text = recorder.markdown.read_text()
    assert text.index("| row |") < text.index("### Run stopped by SIGTERM after 5 s")


def test_gpu_bench_outputs_lines_beside_the_json_and_links_the_checkout_where_rerankforge_is_not_installed(
    tmp_path,
):
    assert gpu_bench.lines_path(Path("o/bench.json")) == Path("o/bench.jsonl")
    assert gpu_bench.lines_path(Path("o/bench.jsonl")) == Path("o/bench.parts.jsonl")
    site = gpu_bench.link_checkout(tmp_path)
    for name in ("trainer", "data_tools", "inference"):
        assert (site / "rerankforge" / name).resolve() == REPO / name
    (found,) = [d for d in distributions(path=[str(site)]) if d.metadata["Name"] == "rerankforge"]
    assert found.version and found.version in (REPO / "setup.cfg").read_text()


# run in a process of its own: a real SIGALRM delivered to the pytest process (threads of ONNX Runtime, OpenVINO
# and torch from earlier tests) ended one clean-clone suite with a segmentation fault
OVERRUN = r"""
import json, signal, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import gpu_bench, gpu_measure

out = Path(sys.argv[2])
recorder = gpu_bench.Recorder(out / "b.json", out / "b.md", "run-1")
budget = gpu_measure.Budget(0.5)  # the part's deadline is the budget's end, 0.5 s from now

def stuck(deadline):
    while True:  # never looks at its deadline
        time.sleep(0.05)

part = gpu_bench.Part("stuck", "scoring", "Stuck", ("stuck",), stuck, lambda result: "| row |")
gpu_bench.HARD_LIMIT_GRACE_S = 0.5
began = time.monotonic()
result = gpu_bench.run_part(part, gpu_bench.SMOKE, budget, recorder, {})
print(json.dumps({"seconds": time.monotonic() - began, "error": result["error"],
                  "timer": list(signal.getitimer(signal.ITIMER_REAL)), "lines": str(recorder.lines)}))
"""


def test_a_part_that_overruns_its_deadline_where_no_round_ends_is_interrupted_and_recorded(tmp_path):
    """A load or a compilation checks no deadline: the hard limit stops it, the run records it and goes on."""
    command = [sys.executable, "-c", OVERRUN, str(REPO / "benchmarks"), str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["seconds"] < 5
    assert facts["error"].startswith("PartOverran: stuck still running")
    assert facts["timer"] == [0.0, 0.0]  # disarmed for the next part
    (record,) = json_lines(Path(facts["lines"]))
    assert record["part"] == "stuck" and record["status"] == "failed"

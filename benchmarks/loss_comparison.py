"""Every loss on the default recipe's data and budget: nDCG@10 on its held-out SQuAD questions and on CISI.

Each run is `make train`'s recipe (recipes/minilm/cross_encoder/squad.yaml) unchanged but for ``--loss`` (and
its settings), the output folder and, for the spread, the seed: the same mined data, steps, schedule and
evaluation. The teacher losses (margin_mse, mse, kl) need teacher scores, which the default data lacks: the first
run's model (the default loss, seed 42) scores the first questions of the mined training file
(``rerankforge-data score``, `--dtype auto`, at the training length), and those runs train on the scored file. Those
are what the budget reads (the recipe's max_steps x 8: 2,880 for the 360 steps of docs/losses.md's runs);
every other run reads as many random questions of the 8,378, drawn by its seed, so the teacher runs differ from
them as one seed differs from another, and scoring the rest (~3x the time) would buy nothing. Their teacher is a
model of the same size trained on the same data: the table says what these losses make of such a teacher, not of
a stronger one.

Held-out SQuAD: the run's own final evaluation (200 questions, BM25 top 20 reranked; docs/losses.md has the table).
CISI: ``rerankforge-eval`` (76 judged queries, BM25 top 100, `--dtype auto`), no training on it.

Runs are resumable: a run whose folder holds eval_results.json is not trained again, a CISI result that exists
is not measured again. Each training is a subprocess whose log is kept in its folder. The table is appended to
benchmarks/RESULTS.md and printed.

    python benchmarks/loss_comparison.py --out outputs/losses
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import append_results  # noqa: E402

RECIPE = REPO / "recipes" / "minilm" / "cross_encoder" / "squad.yaml"
CISI = REPO.parent / "shared" / "data" / "cisi"
DEFAULT_SEED = 42
TEACHER_RUN = "grouped_cross_entropy"
_RECIPE = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
# the teacher scores at the recipe's training budget, the questions its steps read (224 tokens)
TEACHER_MAX_LENGTH = _RECIPE["query_max_len"] + _RECIPE["passage_max_len"]
TEACHER_QUESTIONS = _RECIPE["max_steps"] * _RECIPE["per_device_train_batch_size"]
EVAL_MAIN = "import sys; from rerankforge.trainer.eval_cli import main; sys.exit(main())"


@dataclass(frozen=True)
class Run:
    label: str
    loss: str
    loss_kwargs: dict = field(default_factory=dict)
    seed: int = DEFAULT_SEED
    teacher: bool = False  # trains on the teacher-scored file


RUNS = [
    Run("grouped_cross_entropy", "grouped_cross_entropy"),
    Run("bce", "bce"),
    Run("ranknet", "ranknet"),
    Run("lambda_loss", "lambda_loss"),
    Run("listnet", "listnet"),
    Run("listmle", "listmle"),
    Run("plistmle", "plistmle"),
    Run("margin_mse", "margin_mse", teacher=True),
    Run("mse", "mse", teacher=True),
    Run("kl", "kl", teacher=True),
    Run("grouped_cross_entropy_seed43", "grouped_cross_entropy", seed=43),
    Run("grouped_cross_entropy_seed44", "grouped_cross_entropy", seed=44),
    Run("ranknet_seed43", "ranknet", seed=43),
    Run("ranknet_seed44", "ranknet", seed=44),
]


def run_command(command: list[str], log: Path) -> float:
    """Run ``command`` with its output in ``log``; returns the seconds it took; a failure stops the benchmark."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w", encoding="utf-8") as handle:
        done = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}); see {log}")
    return time.monotonic() - start


def check_same_budget(out: Path) -> None:
    """Refuse to resume runs made with another step count than the recipe's (the recipe changed since): their
    rows would be labelled with today's budget."""
    for state in sorted(out.glob("*/trainer_state.json")):
        steps = json.loads(state.read_text(encoding="utf-8")).get("max_steps")
        if steps != _RECIPE["max_steps"]:
            raise SystemExit(
                f"{state.parent} trained {steps} steps, the recipe now says {_RECIPE['max_steps']}: "
                "resume only runs of the same budget (give --out a new folder)"
            )
    questions = out / "teacher_questions.jsonl"
    if questions.is_file():
        count = len(questions.read_text(encoding="utf-8").splitlines())
        if count != TEACHER_QUESTIONS:
            raise SystemExit(
                f"{questions} holds {count} questions, the recipe's budget reads {TEACHER_QUESTIONS}: "
                "give --out a new folder"
            )


def teacher_file(out: Path) -> Path:
    """The budget's worth of the mined training file, scored by the first run's model (made once)."""
    scored = out / "teacher_scored_train.jsonl"
    if not scored.is_file():
        model = out / TEACHER_RUN
        questions = out / "teacher_questions.jsonl"
        with (model / "data" / "train.jsonl").open(encoding="utf-8") as mined:
            head = list(itertools.islice(mined, TEACHER_QUESTIONS))
        questions.write_text("".join(head), encoding="utf-8")
        command = [sys.executable, "-m", "rerankforge.data_tools", "score", str(questions), str(scored),
                   "--teacher", str(model), "--dtype", "auto", "--batch-size", "64",
                   "--max-length", str(TEACHER_MAX_LENGTH), "--device", "cpu"]  # fmt: skip
        seconds = run_command(command, out / "teacher_scoring.log")
        print(f"teacher scores written to {scored} in {seconds / 60:.1f} min", flush=True)
    return scored


def train(run: Run, out: Path) -> None:
    folder = out / run.label
    if (folder / "eval_results.json").is_file():
        return
    command = [sys.executable, "-m", "rerankforge.trainer", str(RECIPE), "--loss", run.loss,
               "--output_dir", str(folder), "--seed", str(run.seed), "--disable_tqdm", "true"]  # fmt: skip
    if run.loss_kwargs:
        command += ["--loss_kwargs", json.dumps(run.loss_kwargs)]
    if run.teacher:
        command += ["--train_data", str(teacher_file(out))]
    print(f"training {run.label} ...", flush=True)
    seconds = run_command(command, folder.with_name(folder.name + ".train.log"))
    (folder / "wall_seconds.json").write_text(json.dumps({"train": seconds}))
    print(f"  {run.label}: {seconds / 60:.1f} min", flush=True)


def cisi(run: Run, out: Path) -> dict[str, float]:
    folder = out / run.label / "cisi"
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        command = [sys.executable, "-c", EVAL_MAIN, "--model", str(out / run.label),
                   "--data", str(CISI), "--split", "test", "--top-k", "100", "--dtype", "auto",
                   "--device", "cpu", "--output", str(folder)]  # fmt: skip
        run_command(command, out / f"{run.label}.cisi.log")
    return json.loads(metrics.read_text())


def squad(run: Run, out: Path) -> dict[str, float]:
    return json.loads((out / run.label / "eval_results.json").read_text())


def reranker_ndcg(cisi_metrics: dict) -> float:
    return float(cisi_metrics["reranker_metrics"]["ndcg@10"])


def bm25_squad_ndcg(run: Run, out: Path) -> float:
    rows = json.loads((out / run.label / "eval_before_after.json").read_text())
    return float(rows["BM25 (first stage)"]["ndcg@10"])


def table(runs: list[Run], out: Path) -> tuple[str, str]:
    rows = ["| run | loss | settings | seed | held-out SQuAD nDCG@10 | CISI nDCG@10 |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for run in runs:
        settings = ", ".join(f"{k}={v}" for k, v in run.loss_kwargs.items()) or "-"
        if run.teacher:
            settings = (settings + "; " if settings != "-" else "") + "teacher: the first run's model"
            settings += f" on {TEACHER_QUESTIONS:,} questions"
        rows.append(
            f"| {run.label} | `{run.loss}` | {settings} | {run.seed} | {squad(run, out)['eval_ndcg@10']:.4f} | "
            f"{reranker_ndcg(cisi(run, out)):.4f} |"
        )
    first = cisi(runs[0], out)
    rows.append(f"| BM25 (first stage) | - | - | - | {bm25_squad_ndcg(runs[0], out):.4f} | "
                f"{float(first['first_stage_metrics']['ndcg@10']):.4f} |")  # fmt: skip
    spread = []
    for loss in dict.fromkeys(r.loss for r in runs):  # every loss run with several seeds
        seeds = [r for r in runs if r.loss == loss and not r.teacher and not r.loss_kwargs]
        if len(seeds) < 2:
            continue
        for name, value in (("held-out SQuAD", lambda r: squad(r, out)["eval_ndcg@10"]),
                            ("CISI", lambda r: reranker_ndcg(cisi(r, out)))):  # fmt: skip
            values = [value(r) for r in seeds]
            spread.append(
                f"- `{loss}`, {len(values)} seeds ({', '.join(str(r.seed) for r in seeds)}), {name}: "
                f"{', '.join(f'{v:.4f}' for v in values)}; mean {statistics.mean(values):.4f}, range "
                f"{max(values) - min(values):.4f}, sd {statistics.stdev(values):.4f}"
            )
    return "\n".join(rows), "\n".join(spread)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="outputs/losses", help="folder of the runs (resumable)")
    parser.add_argument("--only", nargs="+", help="run labels to train (default: all)")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--no-results", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    check_same_budget(out)
    runs = [r for r in RUNS if not args.only or r.label in args.only]
    for run in runs:
        train(run, out)
        cisi(run, out)
    rows, spread = table(runs, out)
    notes = (
        f"Each run: the default recipe ({_RECIPE['max_steps']} steps, 8 questions x 4 passages, passages cut to "
        "192 tokens in training and read whole when scoring, lr 2e-4, bf16: auto) with only the named setting "
        "changed. Held-out SQuAD: the run's final evaluation (200 questions, BM25 top 20). CISI: rerankforge-eval, "
        "76 queries, BM25 top 100, --dtype auto (bf16 where the CPU computes in it). Each run's wall time is in "
        "its folder (wall_seconds.json); the loss itself costs nothing next to the forward, and some runs "
        "shared the CPU with other work, so the times are not compared here. "
        "Spread of the same recipe over seeds:\n\n" + spread
    )
    print(f"\n{rows}\n\n{notes}\n", flush=True)
    if not args.no_results:
        command = "python benchmarks/loss_comparison.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        append_results(Path(args.results), "Losses compared on the default recipe", command, rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cross-encoder quality, measured the same way for every arm: nDCG@10 on held-out SQuAD articles and on CISI.

Two experiments, each trained with several seeds so the run-to-run spread is measured next to the differences:

- ``parity``: the same data, start weights, hyper-parameters and steps trained once by FlagEmbedding 1.4.2's
  encoder-only fine-tuning (in its own environment, through `flag_train_worker.py`) and once by
  ``rerankforge-train``; both saved models are scored by ``rerankforge-eval``.
- ``negatives``: the default recipe (``recipes/minilm/cross_encoder/squad.yaml``) at a shorter schedule with
  (a) BM25 negatives, (b) dense negatives, (c) hybrid negatives filtered by a teacher with a relative margin.
- ``few-labels``: a user with a few hundred labelled queries, simulated with ``--queries`` (800) questions of
  SQuAD's training articles: the default recipe's settings from MiniLM, then one change per arm (continued
  fine-tuning of ``--teacher`` at a small learning rate, longer training passages, teacher-filtered hybrid
  negatives), and arm 4's data plus distillation from the teacher's scores. Each seed draws its own sample of
  questions, so every arm's spread includes which questions were labelled; within a seed, arms mining alike
  train on one file (the table says "data from arm N", and that arm's time holds the mining).

Evaluation is the same for every model: ``rerankforge-eval`` on the recipe's 200 held-out SQuAD questions (BM25
top 20) and on CISI's 76 judged queries (BM25 top ``--cisi-top-k``), in bf16 where the CPU computes in it
(``--dtype auto``, else fp32 on the fastest exact backend), reading passages whole (512-token
pairs). Results (a row per run, then mean and range per arm) are appended to RESULTS.md.

    python benchmarks/training_quality.py parity --flag-python .venv-flag/bin/python --steps 120 --seeds 42 43
    python benchmarks/training_quality.py negatives --teacher outputs/minilm-squad --steps 120 --seeds 42 43
    python benchmarks/training_quality.py few-labels --teacher outputs/minilm-squad --steps 120 --seeds 42 43
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import append_results  # noqa: E402
from training_speed import SQUAD, run_worker, write_start_model, write_training_groups  # noqa: E402

from rerankforge.inference.modeling.precision import native_bf16  # noqa: E402

CISI = REPO.parent / "shared" / "data" / "cisi"
RECIPE = REPO / "recipes" / "minilm" / "cross_encoder" / "squad.yaml"
BIN = Path(sys.executable).parent
# the default recipe's hyper-parameters, in the argument names both tools read
RECIPE_SETTINGS = {
    "train_group_size": 4,
    "query_max_len": 32,
    "passage_max_len": 192,
    "per_device_train_batch_size": 8,
    "learning_rate": 2e-4,
    "lr_scheduler_type": "linear",
    "weight_decay": 0.01,
    "optim": "adamw_torch_fused",
    "logging_steps": 10,
    "eval_strategy": "no",
    "save_strategy": "no",
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": False,
    "use_cpu": True,
    "bf16": native_bf16(use_cpu=True),  # the recipe's bf16: auto, resolved here for both tools
    "report_to": "none",
    "disable_tqdm": True,
}
NEGATIVE_ARMS = {
    "a: BM25 negatives": [],
    "b: dense negatives": ["--mine_retriever", "dense"],
    "c: hybrid, teacher relative margin 0.05": [
        "--mine_retriever",
        "hybrid",
        "--mine_relative_margin",
        "0.05",
    ],
}

# one teacher pass serves arms 4 and 5: candidates filtered and their scores written for distillation
TEACHER_MINING = [
    "--mine_retriever", "hybrid", "--mine_teacher", "{teacher}", "--mine_relative_margin", "0.05",
    "--mine_output_scores", "true",
]  # fmt: skip
FEW_LABEL_ARMS = {
    "1: MiniLM, default settings (BM25 negatives, lr 2e-4)": [],
    "2: continued from the teacher, lr 2e-5": ["--model_name_or_path", "{teacher}", "--learning_rate", "2e-5"],
    "3: MiniLM, passages cut at 384 tokens in training": ["--passage_max_len", "384"],
    "4: MiniLM, hybrid negatives filtered by the teacher (relative margin 0.05)": [*TEACHER_MINING],
    "5: MiniLM, arm 4's data plus distillation (kl) from the teacher's scores": [
        *TEACHER_MINING, "--distill_loss", "kl",
    ],
}  # fmt: skip


def environment(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_CACHE=str(cache)
    )
    return env


def evaluate(model: Path, cisi_top_k: int, cache: Path) -> dict[str, float]:
    """nDCG@10 (and MRR@10) of ``model`` on the recipe's held-out SQuAD questions and on CISI."""
    out = {}
    for name, data, top_k, extra in (
        ("squad", SQUAD, 20, ["--max-queries", "200"]),
        ("cisi", CISI, cisi_top_k, []),
    ):
        folder = model / "eval-quality" / name
        command = [
            str(BIN / "rerankforge-eval"),
            "--model",
            str(model),
            "--data",
            str(data),
            "--split",
            "test",
        ]
        command += [
            "--top-k",
            str(top_k),
            "--dtype",
            "auto",
            "--backend",
            "auto",  # torch in bf16; else the fastest exact (fp32, within 1e-4) backend here
            "--output",
            str(folder),
        ]
        subprocess.run(
            command + extra, check=True, env=environment(cache), cwd=REPO, stdout=subprocess.DEVNULL
        )
        metrics = json.loads((folder / "metrics.json").read_text())
        out[f"{name} nDCG@10"] = metrics["reranker_metrics"]["ndcg@10"]
        out[f"{name} BM25"] = metrics["first_stage_metrics"]["ndcg@10"]
    return out


def shared_arguments(model_dir: Path, data: Path, steps: int, seed: int) -> list[str]:
    settings = {"model_name_or_path": model_dir, "train_data": data, "max_steps": steps, "seed": seed,
                "warmup_steps": max(1, steps // 10), **RECIPE_SETTINGS}  # fmt: skip
    return [item for key, value in settings.items() for item in (f"--{key}", str(value))]


def train_parity(args: argparse.Namespace, root: Path) -> list[dict]:
    """Each seed: one start model, then FlagEmbedding and rerankforge train it on one JSONL; both are scored."""
    lines = write_training_groups(root / "train.jsonl", args.steps * 8, negatives=15, seed=0, min_negatives=3)
    print(f"training JSONL: {lines} lines", flush=True)
    rows = []
    for seed in args.seeds:
        # the default recipe's attention_dropout: 0.0, in the start model's config so both tools train with it
        model_dir = write_start_model(root / f"start-{seed}", seed, attention_dropout=0.0)
        arguments = shared_arguments(model_dir, root / "train.jsonl", args.steps, seed)
        for tool in ("flagembedding", "rerankforge"):
            out = root / f"{tool}-{seed}"
            start = time.perf_counter()
            if tool == "flagembedding":
                run_worker(args.flag_python, tool, [*arguments, "--save-model-to", str(out / "model")], out,
                           root / "cache")  # fmt: skip
                model = out / "model"
            else:  # rerankforge-train itself; the saved model reads passages whole at inference, as FlagEmbedding's
                command = [str(BIN / "rerankforge-train"), *arguments, "--output_dir", str(out)]
                command += ["--inference_passage_max_len", "480"]
                subprocess.run(command, check=True, env=environment(root / "cache"), cwd=REPO)
                model = out
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "arm": tool,
                    "seed": seed,
                    "train s": seconds,
                    **evaluate(model, args.cisi_top_k, root / "cache"),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def train_recipe_arm(
    args: argparse.Namespace, root: Path, out: Path, seed: int, queries: int, options: list[str]
) -> float:
    """The default recipe at ``--steps`` steps on ``queries`` sampled training questions with ``options``, no
    evaluation during training; returns the seconds it took (mining included)."""
    command = [str(BIN / "rerankforge-train"), str(RECIPE), "--output_dir", str(out), "--seed", str(seed)]
    command += ["--max_steps", str(args.steps), "--warmup_steps", str(max(1, args.steps // 10))]
    command += ["--eval_strategy", "no", "--evaluate_before_training", "false"]
    # mine (and teacher-score) only the queries the run trains on; the recipe's own end-of-run table on 20
    # questions is cheap and not used: every arm is scored by `evaluate`, as the parity runs are
    command += ["--mine_max_queries", str(queries), "--eval_max_queries", "20", *options]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=environment(root / "cache"), cwd=REPO)
    return time.perf_counter() - start


def chosen(arms: dict[str, list[str]], args: argparse.Namespace) -> dict[str, list[str]]:
    """The arms whose names start with one of ``--arms`` (all without it)."""
    return {
        arm: options for arm, options in arms.items() if not args.arms or arm.startswith(tuple(args.arms))
    }


def train_negatives(args: argparse.Namespace, root: Path) -> list[dict]:
    """Each arm and seed: the default recipe at ``--steps`` steps, then scored."""
    rows = []
    for seed in args.seeds:
        arms = chosen(NEGATIVE_ARMS, args)
        for arm, options in reversed(arms.items()):  # the teacher arm first: it has the most to fail
            if "--mine_relative_margin" in options:
                options = [*options, "--mine_teacher", args.teacher]
            out = root / f"{arm[0]}-{seed}"
            seconds = train_recipe_arm(args, root, out, seed, args.steps * 8, options)
            mined = out / "data" / "train.jsonl"
            negatives = [len(json.loads(line)["neg"]) for line in mined.read_text().splitlines()]
            rows.append({"arm": arm, "seed": seed, "train s": seconds, "queries": len(negatives),
                         "negatives / query": statistics.mean(negatives),
                         **evaluate(out, args.cisi_top_k, root / "cache")})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def train_few_labels(args: argparse.Namespace, root: Path) -> list[dict]:
    """Each arm and seed: the default recipe on ``--queries`` sampled training questions for ``--steps`` steps,
    then scored. Arms that mine with the same options and seed train on the first one's file (mining is
    deterministic; the teacher pass is most of such an arm's time)."""
    rows = []
    mined: dict[tuple[str, ...], tuple[str, Path]] = {}  # mining options and seed -> (arm, its file)
    for seed in args.seeds:
        for arm, options in chosen(FEW_LABEL_ARMS, args).items():
            out = root / f"few-{arm[0]}-{seed}"
            arguments = [option.format(teacher=args.teacher) for option in options]
            mining_part, rest = split_mining_options(arguments)
            mining = (str(seed), *mining_part)
            source = mined.get(mining)
            if source is not None:
                arguments = [*rest, "--train_data", str(source[1])]
            seconds = train_recipe_arm(args, root, out, seed, args.queries, arguments)
            mined.setdefault(mining, (arm[0], out / "data" / "train.jsonl"))
            rows.append({"arm": arm, "seed": seed, "train s": seconds,
                         **({"data from": source[0]} if source else {}),
                         **evaluate(out, args.cisi_top_k, root / "cache")})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def split_mining_options(arguments: list[str]) -> tuple[list[str], list[str]]:
    """An arm's options (each with one value, as every arm writes them) as (what decides its training file:
    ``--mine_*`` and the lengths a teacher scores at; everything but ``--mine_*``)."""
    mining, rest = [], []
    for name, value in zip(arguments[::2], arguments[1::2], strict=True):
        if name.startswith("--mine_") or name in ("--query_max_len", "--passage_max_len"):
            mining += [name, value]
        if not name.startswith("--mine_"):
            rest += [name, value]
    return mining, rest


EXPERIMENTS = {"parity": train_parity, "negatives": train_negatives, "few-labels": train_few_labels}


def table(rows: list[dict]) -> str:
    """A row per run, then each arm's mean and range (max - min over seeds) of both nDCG@10s."""
    metrics = ["squad nDCG@10", "cisi nDCG@10"]
    lines = [
        "| arm | seed | SQuAD held-out nDCG@10 | CISI nDCG@10 | train + mine s |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['arm']} | {r['seed']} | {r[metrics[0]]:.4f} | {r[metrics[1]]:.4f} | {r['train s']:.0f}"
              f"{' (data from arm ' + r['data from'] + ')' if 'data from' in r else ''} |"
              for r in sorted(rows, key=lambda r: (r["arm"], r["seed"]))]  # fmt: skip
    lines += ["", "| arm | runs | SQuAD mean (range) | CISI mean (range) |", "|---|---|---|---|"]
    for arm in sorted(dict.fromkeys(r["arm"] for r in rows)):
        mine = [r for r in rows if r["arm"] == arm]
        cells = []
        for metric in metrics:
            values = [r[metric] for r in mine]
            cells.append(f"{statistics.mean(values):.4f} ({max(values) - min(values):.4f})")
        lines.append(f"| {arm} | {len(mine)} | {cells[0]} | {cells[1]} |")
    first = rows[0]
    lines += [
        "",
        f"BM25 on the same candidates: SQuAD {first['squad BM25']:.4f}, CISI {first['cisi BM25']:.4f}.",
    ]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiment", choices=list(EXPERIMENTS))
    parser.add_argument("--flag-python", help="python of the FlagEmbedding 1.4.2 environment (parity)")
    parser.add_argument(
        "--teacher", help="trained reranker: arm c's filter (negatives), arms 2, 4, 5 (few-labels)"
    )
    parser.add_argument("--queries", type=int, default=800, help="labelled training questions (few-labels)")
    parser.add_argument(
        "--arms", nargs="+", help="run only the arms whose names start with these (negatives, few-labels)"
    )
    parser.add_argument("--steps", type=int, default=120, help="training steps of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--cisi-top-k", type=int, default=50)
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    if args.experiment == "parity" and not args.flag_python:
        parser.error("parity needs --flag-python")
    if args.experiment in ("negatives", "few-labels") and not args.teacher:
        parser.error(f"{args.experiment} needs --teacher")
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(dir=REPO / "outputs") as tmp:
        rows = EXPERIMENTS[args.experiment](args, Path(tmp))
    result = table(rows)
    print(result)
    title = {
        "parity": "Cross-encoder quality: FlagEmbedding 1.4.2 vs rerankforge, same data and settings",
        "negatives": "Cross-encoder quality: BM25, dense and teacher-filtered hybrid negatives",
        "few-labels": f"Cross-encoder quality from {args.queries} labelled questions: what helps",
    }[args.experiment]
    notes = (f"{args.steps} steps per run, seeds {args.seeds}; the default recipe's settings (group 4, batch 8, "
             f"query 32 / passage 192 tokens, lr 2e-4 linear with {max(1, args.steps // 10)} warm-up steps, bf16 "
             f"autocast {'on' if RECIPE_SETTINGS['bf16'] else 'off (no native bf16 here)'}, no attention dropout); scored by rerankforge-eval (--dtype auto) on 200 held-out SQuAD questions (BM25 top 20) and "
             f"CISI's 76 judged queries (BM25 top {args.cisi_top_k}). Range: max - min over the seeds. Threads: "
             f"{os.environ.get('OMP_NUM_THREADS', 'all cores')}.")  # fmt: skip
    if args.experiment == "few-labels":
        notes += (f" {args.queries} training questions sampled per seed; the teacher ({args.teacher}) is the "
                  "default recipe's model, trained on SQuAD's training articles: arm 2 starts in-domain.")  # fmt: skip
    append_results(Path(args.results), title, "python benchmarks/training_quality.py " + " ".join(sys.argv[1:]),
                   result, notes)  # fmt: skip


if __name__ == "__main__":
    main()

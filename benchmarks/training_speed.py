"""Cross-encoder training speed: rerankforge against FlagEmbedding 1.4.2's encoder-only reranker fine-tuning, same
data, same starting weights, same hyper-parameters, each tool in its own process and environment.

One training JSONL (FlagEmbedding's format) is mined once from SQuAD's training articles with rerankforge's BM25
tools, and one starting model folder (MiniLM-L6 as a 1-logit classifier with a seeded head) is written once; both
tools train from them with one shared command line (rerankforge accepts FlagEmbedding's argument names): group
size 8, batch 4, query 32 / passage 224 tokens, linear schedule without warm-up, seed 42, no evaluation, no
saving, a loss logged every step. The first ``--warmup-steps`` steps are not timed; groups/s is
``batch x timed steps / (end of the last step - end of the last warm-up step)``. Peak memory is the worker's
ru_maxrss at the end of its last step. Each worker also records its CPU time and the machine's busy time, so the
table shows whether other processes shared the CPU while it was timed (the machine may be shared). Tables (speed,
per-step losses) are appended to RESULTS.md.

    python benchmarks/training_speed.py --flag-python /path/to/flag-venv/bin/python
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import append_results  # noqa: E402

SQUAD = REPO.parent / "shared" / "data" / "squad-v1.1" / "dev-v1.1.json"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TOOLS = ("rerankforge", "flagembedding")
WORKERS = {"rerankforge": "rerankforge_train_worker.py", "flagembedding": "flag_train_worker.py"}
GROUP_SIZE = 8
BATCH_SIZE = 4
QUERY_MAX_LEN = 32
PASSAGE_MAX_LEN = 224
RANK_RANGE = (1, 30)  # the default recipe's hard negatives: BM25 ranks 1-30


def write_training_groups(
    path: str | Path,
    max_queries: int,
    negatives: int = 15,
    seed: int = 0,
    min_negatives: int = GROUP_SIZE - 1,
) -> int:
    """Write the benchmark's training JSONL and return its number of lines.

    A seeded sample of ``max_queries`` questions from SQuAD's training articles (the recipe's article split),
    each with ``negatives`` BM25 hard negatives from ranks 1-30 of the whole training corpus, mined by
    rerankforge's own tools. Lines with fewer than ``min_negatives`` (default ``GROUP_SIZE - 1``) negatives are
    left out, so neither tool ever draws a negative twice (their repeat rules differ, and that would change the
    work).
    """
    from rerankforge.data_tools.ir_data import load_ir_split
    from rerankforge.data_tools.mining import MiningOptions, mine_from_dataset, write_jsonl

    if negatives < min_negatives:
        raise ValueError(f"negatives must be at least {min_negatives}")
    train = load_ir_split(str(SQUAD), "train")
    chosen = random.Random(seed).sample(train.judged_queries(), min(max_queries, len(train.judged_queries())))
    # the sampled questions against the whole training corpus (IRDataset.subset would cut it to their articles)
    sample = dataclasses.replace(
        train, queries={q: train.queries[q] for q in chosen}, qrels={q: train.qrels[q] for q in chosen}
    )
    options = MiningOptions(num_negatives=negatives, rank_range=RANK_RANGE, seed=seed)
    records, _ = mine_from_dataset(sample, options, show_progress=False)
    records = [r for r in records if len(r["neg"]) >= min_negatives]
    write_jsonl(records, path)
    return len(records)


def write_start_model(folder: str | Path, seed: int, attention_dropout: float | None = None) -> Path:
    """The one folder both tools load: MiniLM as a 1-logit classifier, head drawn after ``seed``, safetensors;
    ``attention_dropout`` is written into its config, so both tools train with it.

    Saved with the tokenizer and the config in the spellings transformers 4.x reads (rerankforge's export
    helpers), so FlagEmbedding's transformers 4.57 loads the very weights rerankforge's 5.x does.
    """
    import torch
    from transformers import AutoTokenizer

    from rerankforge.inference.modeling.cross_encoder import load_cross_encoder
    from rerankforge.inference.modeling.sources import resolve_model_path
    from rerankforge.trainer.portable_files import make_config_portable, make_tokenizer_portable

    folder = Path(folder)
    torch.manual_seed(seed)
    model = load_cross_encoder(MODEL, attention_dropout=attention_dropout)
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(resolve_model_path(MODEL)).save_pretrained(folder)
    make_tokenizer_portable(folder)
    make_config_portable(folder)
    return folder


def training_arguments(
    model_dir: Path, data: Path, max_steps: int, bf16: bool, learning_rate: float, seed: int
) -> list[str]:
    """The one command line both workers parse (FlagEmbedding's argument names, which rerankforge accepts)."""
    settings: dict[str, Any] = {
        "model_name_or_path": model_dir,
        "train_data": data,
        "train_group_size": GROUP_SIZE,
        "query_max_len": QUERY_MAX_LEN,
        "passage_max_len": PASSAGE_MAX_LEN,
        "per_device_train_batch_size": BATCH_SIZE,
        "learning_rate": learning_rate,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "optim": "adamw_torch_fused",  # both versions' default, named so a change of default cannot split them
        "seed": seed,
        "max_steps": max_steps,
        "logging_steps": 1,
        "eval_strategy": "no",
        "save_strategy": "no",
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "use_cpu": True,
        "bf16": bf16,
        "report_to": "none",
        "disable_tqdm": True,
    }
    return [item for key, value in settings.items() for item in (f"--{key}", str(value))]


def run_worker(python: str, tool: str, arguments: list[str], output_dir: Path, cache: Path) -> dict[str, Any]:
    """One training run in its own process; returns the worker's JSON line. Its log goes to our stderr."""
    # nothing of ours leaks into the other environment; offline, with a throw-away datasets cache
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_CACHE=str(cache)
    )
    command = [python, str(REPO / "benchmarks" / WORKERS[tool]), *arguments, "--output_dir", str(output_dir)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO, check=False)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{tool} worker failed (exit {done.returncode}); its log is above")
    return json.loads(lines[-1])


def groups_per_second(step_times: list[float], warmup_steps: int, batch_size: int = BATCH_SIZE) -> float:
    """Groups trained per second over the timed steps (from the end of the last warm-up step)."""
    timed = len(step_times) - warmup_steps
    if warmup_steps < 1 or timed < 1:
        raise ValueError(f"need at least one warm-up and one timed step, got {len(step_times)} steps")
    return batch_size * timed / (step_times[-1] - step_times[warmup_steps - 1])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _timed_delta(values: list[float], warmup_steps: int) -> float:
    return values[-1] - values[warmup_steps - 1]


def cpu_seconds_per_step(run: dict[str, Any], warmup_steps: int) -> float | None:
    """The worker's own CPU time (all threads) per timed step: less shaken by other processes than wall time."""
    cpu = run.get("cpu_times")
    return _timed_delta(cpu, warmup_steps) / (len(cpu) - warmup_steps) if cpu else None


def other_load(run: dict[str, Any], warmup_steps: int) -> float | None:
    """Cores that other processes kept busy, on average, during the timed steps (0 on a quiet machine)."""
    busy, cpu = run.get("machine_busy"), run.get("cpu_times")
    if not busy or not cpu or None in (busy[warmup_steps - 1], busy[-1]):
        return None
    others = _timed_delta(busy, warmup_steps) - _timed_delta(cpu, warmup_steps)
    return max(0.0, others) / _timed_delta(run["step_times"], warmup_steps)


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def speed_row(tool: str, runs: list[dict[str, Any]], reference: float, warmup_steps: int) -> str:
    """One tool's row: groups/s (median, with min-max over rounds), peak RSS, ratio, CPU time and other load,
    tokens per timed step."""
    speeds = [groups_per_second(r["step_times"], warmup_steps) for r in runs]
    median = statistics.median(speeds)
    spread = f" ({min(speeds):.2f}-{max(speeds):.2f})" if len(speeds) > 1 else ""
    first = runs[0]
    shapes = zip(first["rows_per_batch"][warmup_steps:], first["padded_lengths"][warmup_steps:], strict=True)
    padded = _mean([rows * length for rows, length in shapes])
    real = _mean(first["real_tokens"][warmup_steps:])
    cpu = [c for c in (cpu_seconds_per_step(r, warmup_steps) for r in runs) if c is not None]
    loads = [x for x in (other_load(r, warmup_steps) for r in runs) if x is not None]
    return (
        f"| {tool} | {median:.2f}{spread} | {max(r['peak_rss_mb'] for r in runs):.0f} | "
        f"{reference / median:.2f}x | {_cell(statistics.median(cpu) if cpu else None, 1)} | "
        f"{_cell(max(loads) if loads else None, 2)} | {padded:.0f} | {real:.0f} | {first['attn_implementation']} |"
    )


def loss_table(runs: dict[str, list[dict[str, Any]]], warmup_steps: int) -> str:
    """Per-step losses of each tool's first round, side by side (warm-up steps marked)."""
    first = {tool: runs[tool][0]["losses"] for tool in runs}
    lines = ["| step | " + " | ".join(f"{tool} loss" for tool in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for index in range(max(len(losses) for losses in first.values())):
        label = f"{index + 1} (warm-up)" if index < warmup_steps else str(index + 1)
        cells = [first[tool][index] if index < len(first[tool]) else None for tool in runs]
        lines.append(f"| {label} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |")
    return "\n".join(lines)


def results_table(runs: dict[str, list[dict[str, Any]]], warmup_steps: int) -> str:
    """The speed table and the loss table from already-measured worker results (``tool -> one dict a round``)."""
    reference = statistics.median(
        groups_per_second(r["step_times"], warmup_steps) for r in runs["rerankforge"]
    )
    rounds = len(runs["rerankforge"])
    speed_header = "groups/s" if rounds == 1 else f"groups/s (median of {rounds}, min-max)"
    lines = [
        f"| tool | {speed_header} | peak RSS MB | rerankforge / tool (groups/s) | CPU s / step | "
        "other processes (cores) | padded tokens / step | real tokens / step | attention |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [speed_row(tool, runs[tool], reference, warmup_steps) for tool in runs]
    return (
        "\n".join(lines)
        + "\n\nPer-step training loss (first round of each tool):\n\n"
        + loss_table(runs, warmup_steps)
    )


def contention_warning(runs: dict[str, list[dict[str, Any]]], warmup_steps: int, limit: float = 0.1) -> str:
    """A warning naming the runs during which other processes kept more than ``limit`` cores busy ("" if none):
    their groups/s measure the sharing, not the tool."""
    busy = [
        f"{tool} round {index + 1}: {load:.2f} cores"
        for tool in runs
        for index, run in enumerate(runs[tool])
        if (load := other_load(run, warmup_steps)) is not None and load > limit
    ]
    if not busy:
        return ""
    return (
        "WARNING: other processes ran during the timed steps (" + "; ".join(busy) + "), so those wall-clock "
        "speeds are not clean; CPU s / step is less affected. "
    )


def describe_run(runs: dict[str, list[dict[str, Any]]], lines: int, args: argparse.Namespace) -> str:
    """The notes under the tables: data, model, dtype, settings, processes and versions."""
    versions = "; ".join(
        f"{tool}: " + ", ".join(f"{k} {v}" for k, v in runs[tool][0]["versions"].items()) for tool in runs
    )
    checksums = {tool: runs[tool][0]["start_checksum"] for tool in runs}
    same_start = abs(checksums["rerankforge"] - checksums["flagembedding"]) <= 1e-9 * abs(
        checksums["rerankforge"]
    )
    return contention_warning(runs, args.warmup_steps) + (
        f"Data: {lines} lines (SQuAD v1.1 dev, training articles of the recipe's split, seeded sample of "
        f"questions, each with {args.negatives} BM25 hard negatives from ranks {RANK_RANGE[0]}-{RANK_RANGE[1]} "
        f"mined by rerankforge), one JSONL read by both tools. Model: {MODEL} as a 1-logit sequence classifier "
        f"(seeded head), one safetensors folder loaded by both (starting weights "
        f"{'identical' if same_start else 'DIFFERENT'}: |w| sums {checksums['rerankforge']:.6f} / "
        f"{checksums['flagembedding']:.6f}). {'bf16 autocast' if args.bf16 else 'fp32'} on CPU "
        f"({runs['rerankforge'][0]['threads']} / {runs['flagembedding'][0]['threads']} torch threads); group "
        f"size {GROUP_SIZE}, batch {BATCH_SIZE}, query {QUERY_MAX_LEN} / passage {PASSAGE_MAX_LEN} tokens, "
        f"lr {args.learning_rate:g} linear without warm-up, AdamW (fused), weight decay 0, dropout as in the "
        f"model, seed {args.seed}, {args.warmup_steps} untimed + {args.steps} timed steps, "
        f"{args.rounds} round(s) in alternation, no evaluation or saving, loss logged every step, dataloader in "
        "the main process. Each tool ran in its own process: rerankforge in its venv, FlagEmbedding's "
        "`EncoderOnlyRerankerRunner` (its own argument classes, dataset, collator and Trainer) in its own "
        "environment, from the same command line. Peak RSS: ru_maxrss at the end of the last step (model, data "
        "and imports included). CPU s / step: the worker's own CPU time (all threads) per timed step; other "
        "processes: the machine's busy CPU time (/proc/stat) minus the worker's, per wall second of the timed "
        "steps (0 on a quiet machine). Tokens / step: the timed steps' padded rows x length and real (unpadded) tokens, "
        "first round, as the collators padded them; rerankforge then scores each batch in length-sorted slices "
        "cut to their own longest pair (`length_sorted_chunks`, auto = 4 on the CPU), so it runs on fewer padded "
        "tokens than the column says. FlagEmbedding pads each batch to its longest pair (no pad_to_multiple_of by default), "
        "rerankforge to the longest rounded up to a multiple of 8; FlagEmbedding cuts the query at query + "
        "passage/4 and the passage at passage + query/2 tokens before cutting the pair to query + passage, "
        "rerankforge at query and passage, so with short queries FlagEmbedding's pairs keep more passage tokens. "
        "Both models run BERT's sdpa attention; with attention dropout in training, torch's CPU sdpa has no fused "
        "kernel and takes its math path in both. The two tools draw their groups with different RNGs, so losses agree in level, not "
        f"digit for digit. Versions: {versions}."
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flag-python", required=True, help="python of the FlagEmbedding 1.4.2 environment")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=5, help="untimed steps before them (at least 1)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per tool, in alternation")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for both tools (default fp32)")
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-queries", type=int, default=1000, help="lines of the training JSONL (at most)")
    parser.add_argument("--negatives", type=int, default=15, help="hard negatives mined per query")
    parser.add_argument(
        "--rerankforge-options",
        default="",
        help="extra rerankforge-only options, e.g. '--length_sorted_chunks 4' (recorded in the command)",
    )
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS), help="which tools to run")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    if args.warmup_steps < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup-steps, --steps and --rounds must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    pythons = {"rerankforge": sys.executable, "flagembedding": args.flag_python}
    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in args.tools}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = write_training_groups(root / "train.jsonl", args.max_queries, args.negatives, seed=0)
        model_dir = write_start_model(root / "start-model", args.seed)
        arguments = training_arguments(model_dir, root / "train.jsonl", args.warmup_steps + args.steps,
                                       args.bf16, args.learning_rate, args.seed)  # fmt: skip
        for round_index in range(args.rounds):
            for tool in args.tools:
                out = root / f"{tool}-{round_index}"
                options = arguments + (args.rerankforge_options.split() if tool == "rerankforge" else [])
                result = run_worker(pythons[tool], tool, options, out, root / "datasets-cache")
                runs[tool].append(result)
                speed = groups_per_second(result["step_times"], args.warmup_steps)
                print(f"round {round_index + 1} {tool}: {speed:.2f} groups/s, "
                      f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
    if set(args.tools) != set(
        TOOLS
    ):  # a trial of one tool (e.g. a rerankforge option): no comparison to write
        print("only some tools ran: nothing appended to", args.results)
        return
    table = results_table(runs, args.warmup_steps)
    if warning := contention_warning(runs, args.warmup_steps):
        print(warning, file=sys.stderr)
    notes = describe_run(runs, lines, args)
    print(f"\n{table}\n\n{notes}")
    append_results(Path(args.results), "Cross-encoder training: rerankforge vs FlagEmbedding fine-tuning",
                   "python benchmarks/training_speed.py " + " ".join(sys.argv[1:]), table, notes)  # fmt: skip


if __name__ == "__main__":
    main()

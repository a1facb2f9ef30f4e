"""Long documents: truncate against firstp, maxp and meanp on one collection, the same model and candidates.

Each mode is one `rerankforge-eval` pass (BM25's top k over the documents, the same seeded queries): nDCG@10,
MRR@10, the windows each pair took and pairs/s, all in one run on one machine, so the cost of windows is a ratio
measured here. The table goes to benchmarks/RESULTS.md (and, with --output, to a JSON file).

    rerankforge-data long-docs squad-v1.1-dev outputs/squad-long --tokenizer MODEL
    python benchmarks/long_passages.py --model outputs/minilm-squad --data outputs/squad-long --top-k 20
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import append_results  # noqa: E402

from rerankforge.trainer.eval_cli import evaluate_model, make_parser  # noqa: E402

MODES = ("truncate", "firstp", "maxp", "meanp")


def measure(model: str, data: str, setting: str, extra: list[str]) -> dict:
    """One eval pass; ``setting`` is a mode, or ``mode:window`` (stride half the window)."""
    mode, _, window = setting.partition(":")
    window_flags = ["--window", window] if window else []
    args = make_parser().parse_args(
        ["--model", model, "--data", data, "--long-passages", mode, *window_flags, *extra]
    )
    result = evaluate_model(args)
    metrics = result["reranker_metrics"]
    return {
        "mode": mode + (f", window {window}" if window else ""),
        "ndcg@10": metrics["ndcg@10"],
        "mrr@10": metrics["mrr@10"],
        "windows_per_pair": metrics["windows_per_pair"],
        "pairs_per_second": metrics["pairs_per_second"],
        "first_stage_ndcg@10": result["first_stage_metrics"]["ndcg@10"],
        "queries": result["queries"],
        "pairs": result["pairs"],
        "backend": result["backend"],
        "dtype": result["dtype"],
    }


def table(rows: list[dict]) -> str:
    truncate = next(row for row in rows if row["mode"] == "truncate")
    lines = [
        "| mode | nDCG@10 | MRR@10 | windows per pair | pairs/s | time vs truncate |",
        "|---|---|---|---|---|---|",
        f"| BM25 (first stage) | {truncate['first_stage_ndcg@10']:.4f} | | | | |",
    ]
    for row in rows:
        slower = truncate["pairs_per_second"] / row["pairs_per_second"]
        lines.append(
            f"| {row['mode']} | {row['ndcg@10']:.4f} | {row['mrr@10']:.4f} | {row['windows_per_pair']:.2f} | "
            f"{row['pairs_per_second']:.1f} | {slower:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="outputs/minilm-squad")
    parser.add_argument("--data", default="outputs/squad-long")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--max-queries", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backend", default="torch", help="one backend for every mode (auto would measure)")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 where the CPU computes in it (AMX)")
    parser.add_argument("--settings", nargs="+", default=list(MODES), help="modes, or mode:window (tokens)")
    parser.add_argument("--output", help="also write the rows as JSON here")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    extra = ["--top-k", str(args.top_k), "--max-queries", str(args.max_queries), "--batch-size",
             str(args.batch_size), "--backend", args.backend, "--dtype", args.dtype, "--split", "test"]  # fmt: skip
    warm_up = [*extra[:2], "--max-queries", "5", *extra[4:]]
    measure(args.model, args.data, "maxp", warm_up)  # first calls (bf16 kernels, caches) out of the first row
    rows = []
    for setting in args.settings:
        rows.append(measure(args.model, args.data, setting, extra))
        print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    print(text)
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    command = "python benchmarks/long_passages.py " + " ".join(sys.argv[1:])
    notes = (
        f"{rows[0]['queries']} queries, BM25's top {args.top_k} documents each ({rows[0]['pairs']} pairs), "
        f"backend {rows[0]['backend']} ({rows[0]['dtype']}), batch {args.batch_size}; windows are the model's passage budget beside "
        "each query unless a row names one, stride half the window; meanp averages the best 3 windows."
    )
    append_results(
        Path(args.results), f"Long documents: truncate vs windows ({args.data})", command, text, notes
    )


if __name__ == "__main__":
    main()

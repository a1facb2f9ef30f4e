"""Which window of a long positive training keeps: does it still hold the answer?

SQuAD questions over documents of consecutive paragraphs (`rerankforge-data long-docs --split train`), mined
with BM25 (`rerankforge-data mine`), then each passage cut to one window by `rerankforge-data window` with each
chooser. A positive is right when it still holds one of the question's SQuAD answers. The table goes to
benchmarks/RESULTS.md.

    python benchmarks/training_windows.py --data outputs/squad-long-train --tokenizer outputs/minilm-squad
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import append_results  # noqa: E402

SQUAD = REPO.parent / "shared" / "data" / "squad-v1.1" / "dev-v1.1.json"


def squad_answers(path: Path) -> dict[str, set[str]]:
    answers: dict[str, set[str]] = {}
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers.setdefault(qa["question"].strip(), set()).update(a["text"] for a in qa["answers"])
    return answers


def holding_answer(path: Path, answers: dict[str, set[str]]) -> tuple[int, int]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    hits = sum(any(answer in record["pos"][0] for answer in answers[record["query"]]) for record in records)
    return hits, len(records)


def data_command(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "rerankforge.data_tools", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="outputs/squad-long-train", help="a long-docs BEIR folder (train)")
    parser.add_argument("--tokenizer", default="outputs/minilm-squad")
    parser.add_argument("--window", type=int, default=448)
    parser.add_argument("--max-queries", type=int, default=2000)
    parser.add_argument("--work", default="outputs/training-windows")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    mined = work / "mined.jsonl"
    data_command("mine", args.data, str(mined), "--split", "train", "--max-queries", str(args.max_queries))
    answers = squad_answers(SQUAD)
    rows = [("whole document (no cut)", *holding_answer(mined, answers))]
    report = {}
    for chooser, label in (("first", "first window (truncation)"), ("bm25", "BM25's window")):
        out = work / f"{chooser}.jsonl"
        data_command("window", str(mined), str(out), "--window", str(args.window), "--tokenizer", args.tokenizer,
                     "--choose", chooser)  # fmt: skip
        rows.append((label, *holding_answer(out, answers)))
        report = json.loads(Path(f"{out}.windows.json").read_text(encoding="utf-8"))
    lines = ["| positive kept | holds an answer | share |", "|---|---|---|"]
    lines += [f"| {label} | {hits} of {total} | {hits / total:.1%} |" for label, hits, total in rows]
    table = "\n".join(lines)
    print(table)
    command = "python benchmarks/training_windows.py " + " ".join(sys.argv[1:])
    notes = f"window {args.window} tokens; the BM25 cut's report: {json.dumps(report)}"
    append_results(Path(args.results), f"Training windows: which window a long positive keeps ({args.data})",
                   command, table, notes)  # fmt: skip


if __name__ == "__main__":
    main()

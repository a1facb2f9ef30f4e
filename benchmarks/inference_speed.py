"""Cross-encoder inference speed: rerankforge `Reranker.compute_score` against FlagEmbedding's FlagReranker and
sentence-transformers' `CrossEncoder.predict`, same exported weights, same real pairs, fp32, max length 512.

Pairs: held-out SQuAD questions, each with BM25's top 10 passages (lengths vary as real candidate lists do).
Tools run in alternation (A B C A B C ...) for several rounds; each pass scores every pair; the table gives
median / min / max pairs/s, ratios of medians, and the largest score difference to rerankforge's.

    python benchmarks/inference_speed.py --flag-python /path/to/flag-venv/bin/python --model outputs/minilm-squad
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import append_results  # noqa: E402

from rerankforge.data_tools.ir_data import load_ir_split  # noqa: E402
from rerankforge.inference import FlagReranker  # noqa: E402
from rerankforge.trainer.evaluation import RerankEvalSet  # noqa: E402
from rerankforge.trainer.export import export  # noqa: E402

SQUAD = REPO.parent / "shared" / "data" / "squad-v1.1" / "dev-v1.1.json"
TOOLS = ("rerankforge", "flagembedding", "sentence_transformers")


def real_pairs(queries: int, top_k: int) -> list[list[str]]:
    eval_set = RerankEvalSet.from_dataset(load_ir_split(str(SQUAD), "test"), top_k, queries, seed=0)
    return eval_set.texts(eval_set.pairs())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flag-python", required=True)
    parser.add_argument("--model", required=True, help="a cross-encoder checkpoint (exported before timing)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()

    pairs = real_pairs(args.queries, args.top_k)
    with tempfile.TemporaryDirectory() as tmp:
        folder = export(args.model, Path(tmp) / "model")
        pairs_file = Path(tmp) / "pairs.json"
        pairs_file.write_text(json.dumps(pairs))
        worker = subprocess.Popen(
            [args.flag_python, str(REPO / "benchmarks" / "flag_worker.py"), str(folder), str(pairs_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        # rerankforge's Reranker scoring path, given FlagReranker's budgets (query 384, passage and pair 512) so
        # every tool encodes the same tokens; the checkpoint's trained budgets (32/192) would do less work
        ours = FlagReranker(str(folder), devices="cpu", query_max_length=384, max_length=512)
        ours.compute_score(pairs[:32], batch_size=32)  # warm-up

        def run(tool: str, batch: int) -> tuple[float, list[float]]:
            if tool == "rerankforge":
                start = time.perf_counter()
                scores = ours.compute_score(pairs, batch_size=batch)
                return time.perf_counter() - start, scores
            worker.stdin.write(json.dumps({"tool": tool, "batch": batch}) + "\n")
            worker.stdin.flush()
            reply = json.loads(worker.stdout.readline())
            return reply["seconds"], reply["scores"]

        speeds = {(t, b): [] for t in TOOLS for b in args.batch_sizes}
        diffs = {(t, b): 0.0 for t in TOOLS for b in args.batch_sizes}
        for _ in range(args.rounds):
            for batch in args.batch_sizes:
                reference = None
                for tool in TOOLS:
                    seconds, scores = run(tool, batch)
                    speeds[tool, batch].append(len(pairs) / seconds)
                    reference = scores if tool == "rerankforge" else reference
                    diff = max(abs(a - b) for a, b in zip(reference, scores, strict=True))
                    diffs[tool, batch] = max(diffs[tool, batch], diff)
                    print(f"{tool} batch {batch}: {len(pairs) / seconds:.1f} pairs/s", flush=True)
        worker.stdin.close()
        worker.wait()

    lines = [
        "| batch | tool | median pairs/s | min | max | rerankforge / tool (medians) | max abs score diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch in args.batch_sizes:
        ours_median = statistics.median(speeds["rerankforge", batch])
        for tool in TOOLS:
            values = speeds[tool, batch]
            median = statistics.median(values)
            lines.append(
                f"| {batch} | {tool} | {median:.1f} | {min(values):.1f} | {max(values):.1f} | "
                f"{ours_median / median:.2f}x | {diffs[tool, batch]:.1e} |"
            )
    table = "\n".join(lines)
    print(table)
    lengths = sorted(len(q) + len(p) for q, p in pairs)
    notes = (
        f"{len(pairs)} pairs: {args.queries} held-out SQuAD questions x BM25 top {args.top_k} (median "
        f"{lengths[len(lengths) // 2]} characters per pair); fp32, max length 512, {args.rounds} rounds in "
        "alternation; FlagEmbedding 1.4.2 and sentence-transformers 5.x ran in their own environment "
        "(transformers 4.57), rerankforge in its own process."
    )
    append_results(Path(args.results), "Cross-encoder inference: rerankforge vs FlagReranker vs CrossEncoder",
                   "python benchmarks/inference_speed.py " + " ".join(sys.argv[1:]), table, notes)  # fmt: skip


if __name__ == "__main__":
    main()

"""Inference speed: rerankforge against FlagEmbedding and sentence-transformers, same weights, same real pairs.

Cross-encoder: rerankforge `FlagReranker.compute_score` with the torch backend (exact), the ONNX Runtime backend
(exact, fp32) and the int8 ONNX backend (fast path, opt-in), against FlagEmbedding's `FlagReranker.compute_score`
and sentence-transformers' `CrossEncoder.predict`. LLM family (with ``--llm``): rerankforge `FlagLLMReranker`
against FlagEmbedding's. fp32, max length 512, every tool on the same exported folders and the same pairs.

Pairs: held-out SQuAD questions, each with BM25's top passages (lengths vary as real candidate lists do). Every
tool runs in a process of its own (the baselines in their own environment); tools alternate (A B C A B C ...)
for several rounds; each pass scores every pair after a warm-up. Reported: median / min / max pairs/s, ratios of
medians, the largest score difference to rerankforge's torch scores, and nDCG@10 of each rerankforge backend on
the held-out questions (so the fast path's quality stands next to its speed).

    python benchmarks/inference_speed.py --flag-python .venv-flag/bin/python \\
        --model outputs/minilm-squad --llm outputs/smollm2-llm-squad
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import append_results  # noqa: E402

SQUAD = REPO.parent / "shared" / "data" / "squad-v1.1" / "dev-v1.1.json"
OURS = ("rerankforge", "rerankforge-onnx", "rerankforge-onnx-int8", "rerankforge-openvino",
        "rerankforge-openvino-bf16", "rerankforge-auto")  # fmt: skip
BASELINES = ("flagembedding", "sentence_transformers")
# sentence-transformers' own CPU backends (need optimum-onnx / optimum-intel in the baselines' environment)
BASELINE_BACKENDS = (
    "sentence_transformers-onnx",
    "sentence_transformers-onnx-int8",
    "sentence_transformers-openvino",
)
LLM_TOOLS = ("rerankforge-llm", "flagembedding-llm")
BACKEND_OF = {"rerankforge": "torch", "rerankforge-onnx": "onnx", "rerankforge-onnx-int8": "onnx-int8",
              "rerankforge-openvino": "openvino", "rerankforge-openvino-bf16": "openvino-bf16",
              "rerankforge-auto": "auto"}  # fmt: skip
EXACT_TOLERANCE = 1e-4
INEXACT = (
    "torch",
    "onnx-int8",
    "openvino-bf16",
)  # nDCG@10 measured for these: the exact backends rank as torch

Speeds = dict[tuple[str, int], list[float]]  # (tool, batch) -> pairs/s of each round
Diffs = dict[tuple[str, int], float]  # (tool, batch) -> max abs score difference to the reference tool


def real_pairs(queries: int, top_k: int, data: Path = SQUAD, seed: int = 0) -> list[list[str]]:
    """[query, passage] for ``queries`` held-out SQuAD questions x BM25's top ``top_k`` passages."""
    from rerankforge.data_tools.ir_data import load_ir_split
    from rerankforge.trainer.evaluation import RerankEvalSet

    eval_set = RerankEvalSet.from_dataset(load_ir_split(str(data), "test"), top_k, queries, seed=seed)
    return [list(pair) for pair in eval_set.texts(eval_set.pairs())]


def build_pairs(queries: int, top_k: int, llm_pairs: int, data: Path = SQUAD) -> dict[str, list[list[str]]]:
    """The one pairs file every tool reads: all pairs for cross-encoders, an evenly spread subset for LLMs."""
    pairs = real_pairs(queries, top_k, data)
    step = max(1, len(pairs) // llm_pairs) if llm_pairs else len(pairs) + 1
    return {"cross_encoder": pairs, "llm": pairs[::step][:llm_pairs]}


def portable_folder(model: str, out: Path) -> Path:
    """A folder both environments load: `rerankforge-export` for our checkpoints; for a plain model (the
    untrained SmolLM2 used for LLM speed) a copy with the config and tokenizer spellings transformers 4.x reads."""
    from rerankforge.inference.modeling.sources import resolve_model_path
    from rerankforge.trainer.export import copy_model_files, export
    from rerankforge.trainer.portable_files import make_config_portable, make_tokenizer_portable

    path = Path(resolve_model_path(model))
    if (path / "rerankforge.json").is_file():
        return export(path, out, merge_lora=(path / "adapter_config.json").is_file())
    out.mkdir(parents=True)
    copy_model_files(path, out)
    make_tokenizer_portable(out)
    make_config_portable(out)
    return out


class Worker:
    """A scoring process (ours or a baseline's) that answers {"tool", "batch"} with seconds and scores."""

    def __init__(self, python: str, script: str, options: Sequence[str]):
        command = [python, str(REPO / "benchmarks" / script), *options]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def time(self, tool: str, batch: int) -> tuple[float, list[float]]:
        self.process.stdin.write(json.dumps({"tool": tool, "batch": batch}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the worker for {tool} ended (exit {self.process.wait()}); see its output above"
            )
        reply = json.loads(line)
        return reply["seconds"], reply["scores"]

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # a worker that died already said why on stderr
            self.process.stdin.close()
        self.process.wait()


def alternate(
    workers: dict[str, Worker], tools: Sequence[str], batch_sizes: Sequence[int], rounds: int
) -> tuple[Speeds, Diffs]:
    """Every tool once per round and batch size, in turn; differences are to the first tool's scores."""
    speeds: Speeds = {(t, b): [] for t in tools for b in batch_sizes}
    diffs: Diffs = {(t, b): 0.0 for t in tools for b in batch_sizes}
    for round_index in range(rounds):
        for batch in batch_sizes:
            reference: list[float] | None = None
            for tool in tools:
                seconds, scores = workers[tool].time(tool, batch)
                reference = scores if reference is None else reference
                speeds[tool, batch].append(len(scores) / seconds)
                diff = max(abs(a - b) for a, b in zip(reference, scores, strict=True))
                diffs[tool, batch] = max(diffs[tool, batch], diff)
                print(f"round {round_index + 1} {tool} batch {batch}: {len(scores) / seconds:.1f} pairs/s",
                      flush=True)  # fmt: skip
    return speeds, diffs


def speed_table(speeds: Speeds, diffs: Diffs, tools: Sequence[str], batch_sizes: Sequence[int]) -> str:
    """Median / min / max pairs/s per tool, and the largest score difference to the first tool."""
    lines = [
        f"| batch | tool | median pairs/s | min | max | max abs score diff to {tools[0]} |",
        "|---|---|---|---|---|---|",
    ]
    for batch in batch_sizes:
        for tool in tools:
            values = speeds[tool, batch]
            lines.append(
                f"| {batch} | {tool} | {statistics.median(values):.1f} | {min(values):.1f} | "
                f"{max(values):.1f} | {diffs[tool, batch]:.1e} |"
            )
    return "\n".join(lines)


def ratio_table(
    speeds: Speeds,
    diffs: Diffs,
    ours: Sequence[str],
    baselines: Sequence[str],
    batch_sizes: Sequence[int],
    ndcg: dict[str, float] | None = None,
) -> str:
    """Ratio of medians of each of our tools to each baseline, with 'exact' when scores agree to 1e-4."""
    header = " | ".join(f"/ {b}" for b in baselines)
    lines = [
        f"| batch | rerankforge | scores | {header} | nDCG@10 |",
        "|---|---|---|" + "---|" * len(baselines) + "---|",
    ]
    for batch in batch_sizes:
        for tool in ours:
            median = statistics.median(speeds[tool, batch])
            ratios = " | ".join(f"{median / statistics.median(speeds[b, batch]):.2f}x" for b in baselines)
            exact = "exact" if diffs[tool, batch] <= EXACT_TOLERANCE else f"differ ({diffs[tool, batch]:.2g})"
            quality = f"{ndcg[tool]:.4f}" if ndcg and tool in ndcg else "-"
            lines.append(f"| {batch} | {tool} | {exact} | {ratios} | {quality} |")
    return "\n".join(lines)


def ndcg_by_backend(
    model: str, tools: Sequence[str], queries: int, top_k: int, device: str = "cpu"
) -> dict[str, float]:
    """nDCG@10 of each backend on the held-out SQuAD questions (the checkpoint's saved scoring budgets)."""
    from rerankforge.data_tools.ir_data import load_ir_split
    from rerankforge.inference import Reranker
    from rerankforge.trainer.evaluation import RerankEvalSet

    eval_set = RerankEvalSet.from_dataset(load_ir_split(str(SQUAD), "test"), top_k, queries, seed=0)
    pairs = eval_set.pairs()
    result = {}
    for tool in tools:
        backend = BACKEND_OF[tool]
        reranker = Reranker.from_pretrained(
            model, device=device if backend == "torch" else "cpu", backend=backend
        )
        scores = reranker.compute_score(eval_set.texts(pairs), batch_size=64, show_progress=True)
        result[tool] = eval_set.metrics(eval_set.run_from_scores(pairs, scores))["ndcg@10"]
        print(
            f"{tool}: nDCG@10 {result[tool]:.4f} on {len(eval_set.candidates)} held-out questions", flush=True
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flag-python", required=True, help="python of the baseline environment")
    parser.add_argument("--model", required=True, help="a cross-encoder checkpoint (exported before timing)")
    parser.add_argument("--llm", help="an LLM reranker checkpoint (merged on export) or a plain causal LM, "
                        "e.g. HuggingFaceTB/SmolLM2-135M-Instruct, for the LLM comparison")  # fmt: skip
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--llm-pairs", type=int, default=300)
    parser.add_argument("--llm-batch-sizes", type=int, nargs="+", default=[16])
    parser.add_argument("--ndcg-queries", type=int, default=500, help="0 skips the quality check")
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda (on cuda the CPU-only ONNX backends are left out)"
    )
    parser.add_argument(
        "--tools", nargs="+", choices=OURS, default=list(OURS), help="rerankforge backends timed"
    )
    parser.add_argument(
        "--baseline-backends",
        action="store_true",
        help="also sentence-transformers' onnx, dynamic-int8 onnx and openvino backends (optimum-onnx and "
        "optimum-intel in the baselines' environment)",
    )
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()

    pairs = build_pairs(args.queries, args.top_k, args.llm_pairs if args.llm else 0)
    ours = tuple(args.tools) if args.device == "cpu" else OURS[:1]
    ndcg = (
        ndcg_by_backend(
            args.model, [t for t in ours if BACKEND_OF[t] in INEXACT], args.ndcg_queries, 20, args.device
        )
        if args.ndcg_queries
        else None
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = portable_folder(args.model, Path(tmp) / "model")
        options = [
            "--cross-encoder",
            str(folder),
            "--pairs",
            str(Path(tmp) / "pairs.json"),
            "--device",
            args.device,
        ]
        if args.llm:
            llm_folder = portable_folder(args.llm, Path(tmp) / "llm")
            options += ["--llm", str(llm_folder)]
        (Path(tmp) / "pairs.json").write_text(json.dumps(pairs))
        flag = Worker(args.flag_python, "flag_worker.py", options)
        # one process per backend of ours: ONNX Runtime's, OpenVINO's and torch's thread pools never share one
        own = {tool: Worker(sys.executable, "rerankforge_worker.py", options) for tool in ours}
        baselines = (
            *BASELINES,
            *(BASELINE_BACKENDS if args.baseline_backends and args.device == "cpu" else ()),
        )
        workers = {**own, "rerankforge-llm": own["rerankforge"],
                   **{t: flag for t in (*baselines, "flagembedding-llm")}}  # fmt: skip
        try:
            tools = (*ours, *baselines)
            speeds, diffs = alternate(workers, tools, args.batch_sizes, args.rounds)
            tables = [speed_table(speeds, diffs, tools, args.batch_sizes),
                      ratio_table(speeds, diffs, ours, baselines, args.batch_sizes, ndcg)]  # fmt: skip
            if args.llm:
                llm_speeds, llm_diffs = alternate(workers, LLM_TOOLS, args.llm_batch_sizes, args.rounds)
                tables += [speed_table(llm_speeds, llm_diffs, LLM_TOOLS, args.llm_batch_sizes),
                           ratio_table(llm_speeds, llm_diffs, LLM_TOOLS[:1], LLM_TOOLS[1:], args.llm_batch_sizes)]  # fmt: skip
        finally:
            for worker in (flag, *own.values()):
                worker.close()

    table = "\n\n".join(tables)
    print(table)
    lengths = sorted(len(q) + len(p) for q, p in pairs["cross_encoder"])
    notes = (
        f"Cross-encoder: {len(pairs['cross_encoder'])} pairs, {args.queries} held-out SQuAD questions x BM25 top "
        f"{args.top_k} on {args.device} (median {lengths[len(lengths) // 2]} characters per pair); every tool with query 384 / pair "
        f"512 tokens. LLM: {len(pairs['llm'])} of those pairs, max length 512. fp32; {args.rounds} rounds in "
        "alternation after a warm-up; every tool in a process of its own, FlagEmbedding 1.4.2 and "
        "sentence-transformers 5.x in their own environment (transformers 4.57). 'exact': scores within 1e-4 of "
        "rerankforge's torch scores. nDCG@10: the checkpoint on "
        f"{args.ndcg_queries} held-out SQuAD questions x BM25 top 20, with each rerankforge backend."
    )
    append_results(Path(args.results), "Inference speed: rerankforge vs FlagEmbedding vs sentence-transformers",
                   "python benchmarks/inference_speed.py " + " ".join(sys.argv[1:]), table, notes)  # fmt: skip


if __name__ == "__main__":
    main()

"""Runs in rerankforge's environment: times rerankforge's scoring on request (one JSON line in, one out), the
same protocol as `flag_worker.py`. The orchestrator starts one process per backend, so ONNX Runtime's thread
pool and torch's never compete inside one process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable

from rerankforge.inference import FlagLLMReranker, FlagReranker

Scorer = Callable[[list[list[str]], int], list[float]]  # (pairs, batch size) -> scores
CROSS_ENCODER_TOOLS = {
    "rerankforge": "torch",
    "rerankforge-onnx": "onnx",
    "rerankforge-onnx-int8": "onnx-int8",
}


def load_tool(name: str, args: argparse.Namespace) -> tuple[Scorer, str]:
    """The scorer and which pair list it takes. FlagEmbedding's budgets (query 384, pair 512) for every tool,
    so all of them encode the same tokens; our checkpoints' trained budgets would do less work."""
    if name in CROSS_ENCODER_TOOLS:
        backend = CROSS_ENCODER_TOOLS[name]
        reranker = FlagReranker(
            args.cross_encoder,
            query_max_length=384,
            max_length=512,
            backend=backend,
            devices=args.device if backend == "torch" else "cpu",
        )
        return (lambda p, batch: reranker.compute_score(p, batch_size=batch)), "cross_encoder"
    if name == "rerankforge-llm":
        llm = FlagLLMReranker(args.llm, devices=args.device)
        return (lambda p, batch: llm.compute_score(p, batch_size=batch, max_length=512)), "llm"
    raise ValueError(f"unknown tool {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cross-encoder")
    parser.add_argument("--llm")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", required=True, help='JSON {"cross_encoder": [[q, p], ...], "llm": [...]}')
    args = parser.parse_args()
    with open(args.pairs) as handle:
        pairs = json.load(handle)
    tools: dict[str, tuple[Scorer, str]] = {}
    for line in iter(input, ""):
        request = json.loads(line)
        if request["tool"] not in tools:
            tools[request["tool"]] = load_tool(request["tool"], args)
            scorer, kind = tools[request["tool"]]
            scorer(pairs[kind][:32], request["batch"])  # warm-up: one-time costs stay out of the timing
        scorer, kind = tools[request["tool"]]
        start = time.perf_counter()
        scores = scorer(pairs[kind], request["batch"])
        print(json.dumps({"seconds": time.perf_counter() - start, "scores": scores}), flush=True)


if __name__ == "__main__":
    with contextlib.suppress(EOFError):
        main()

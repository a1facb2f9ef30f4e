"""Runs inside the FlagEmbedding environment: times FlagReranker.compute_score, sentence-transformers'
CrossEncoder.predict and FlagLLMReranker.compute_score on request (one JSON line in, one out), models loaded once.

Never imports rerankforge: the orchestrator, `benchmarks/inference_speed.py`, runs rerankforge in its own
processes (`benchmarks/rerankforge_worker.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable

Scorer = Callable[[list[list[str]], int], list[float]]  # (pairs, batch size) -> scores


def load_tool(name: str, args: argparse.Namespace) -> tuple[Scorer, str]:
    """The scorer and which pair list it takes."""
    import torch

    if name == "flagembedding":
        from FlagEmbedding import FlagReranker

        reranker = FlagReranker(args.cross_encoder, use_fp16=False, devices=args.device)
        return (lambda p, batch: reranker.compute_score(p, batch_size=batch, max_length=512)), "cross_encoder"
    if name == "sentence_transformers":
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(args.cross_encoder, device=args.device, max_length=512)
        identity = torch.nn.Identity()

        def predict(p: list[list[str]], batch: int) -> list[float]:
            return model.predict(
                p, batch_size=batch, activation_fn=identity, show_progress_bar=False
            ).tolist()

        return predict, "cross_encoder"
    if name == "flagembedding-llm":
        from FlagEmbedding import FlagLLMReranker

        llm = FlagLLMReranker(args.llm, use_fp16=False, devices=args.device)
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

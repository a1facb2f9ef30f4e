"""Runs in rerankforge's environment: times rerankforge's scoring on request (one JSON line in, one out), the
same protocol as `flag_worker.py`. The orchestrator starts one process per backend, so ONNX Runtime's thread
pool and torch's never compete inside one process.
"""

from __future__ import annotations

import argparse

from scoring_worker import Scorer, serve

from rerankforge.inference import FlagLLMReranker, FlagReranker

CROSS_ENCODER_TOOLS = {
    "rerankforge": "torch",
    "rerankforge-prefetch": "torch",  # the same, with the encoding thread on (the default on CUDA)
    "rerankforge-onnx": "onnx",
    "rerankforge-onnx-int8": "onnx-int8",
    "rerankforge-openvino": "openvino",
    "rerankforge-openvino-bf16": "openvino-bf16",
    "rerankforge-auto": "auto",  # what a load without a backend gets: the calibrated exact backend
}


def skip_forward(reranker: FlagReranker) -> None:
    """The model's score replaced by zeros: what is left is the host side (encode, sort, pad, copy)."""
    import torch

    reranker.model.score = lambda inputs: torch.zeros(inputs["input_ids"].shape[0])


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
            devices=args.device if backend in ("torch", "auto") else "cpu",
        )
        reranker.prefetch = True if name == "rerankforge-prefetch" else None
        if args.skip_forward:
            skip_forward(reranker)
        return (lambda p, batch: reranker.compute_score(p, batch_size=batch)), "cross_encoder"
    if name == "rerankforge-llm":
        llm = FlagLLMReranker(args.llm, devices=args.device)
        return (lambda p, batch: llm.compute_score(p, batch_size=batch, max_length=512)), "llm"
    raise ValueError(f"unknown tool {name!r}")


if __name__ == "__main__":
    serve(load_tool)

"""Runs inside the FlagEmbedding environment: times FlagReranker.compute_score, sentence-transformers'
CrossEncoder.predict and FlagLLMReranker.compute_score on request (one JSON line in, one out), models loaded once.

Never imports rerankforge: the orchestrator, `benchmarks/inference_speed.py`, runs rerankforge in its own
processes (`benchmarks/rerankforge_worker.py`).
"""

from __future__ import annotations

import argparse

from scoring_worker import Scorer, serve


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


if __name__ == "__main__":
    serve(load_tool)

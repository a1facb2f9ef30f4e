"""Runs inside the FlagEmbedding environment (transformers 4.57, FlagEmbedding 1.4.2): score pairs with
FlagEmbedding's own classes (and sentence-transformers' CrossEncoder) and write the scores as JSON.

Never imports rerankforge: it is the other side of `benchmarks/flag_parity.py`.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["cross_encoder", "llm"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.pairs) as handle:
        pairs = json.load(handle)
    result: dict[str, object] = {}
    if args.kind == "cross_encoder":
        from FlagEmbedding import FlagReranker
        from sentence_transformers import CrossEncoder

        start = time.perf_counter()
        result["flagembedding"] = FlagReranker(args.model, use_fp16=False, devices="cpu").compute_score(
            pairs, batch_size=32, max_length=512
        )
        result["flagembedding_seconds"] = time.perf_counter() - start
        import torch

        model = CrossEncoder(args.model, device="cpu", max_length=512)
        result["sentence_transformers"] = model.predict(
            [tuple(p) for p in pairs], batch_size=32, activation_fn=torch.nn.Identity()
        ).tolist()
    else:
        from FlagEmbedding import FlagLLMReranker

        start = time.perf_counter()
        result["flagembedding"] = FlagLLMReranker(args.model, use_fp16=False, devices="cpu").compute_score(
            pairs, batch_size=8, max_length=512
        )
        result["flagembedding_seconds"] = time.perf_counter() - start
    import transformers

    result["versions"] = {"transformers": transformers.__version__}
    with open(args.out, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()

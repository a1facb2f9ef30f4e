"""Runs inside the FlagEmbedding environment: a worker that times FlagReranker.compute_score and
sentence-transformers' CrossEncoder.predict on request (one JSON line in, one out), models loaded once.

Never imports rerankforge: the orchestrator, `benchmarks/inference_speed.py`, runs rerankforge in its own process.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    model_dir, pairs_file = sys.argv[1], sys.argv[2]
    with open(pairs_file) as handle:
        pairs = json.load(handle)
    import torch

    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else torch.get_num_threads())
    tools: dict[str, object] = {}

    def tool(name: str):
        if name not in tools:
            if name == "flagembedding":
                from FlagEmbedding import FlagReranker

                reranker = FlagReranker(model_dir, use_fp16=False, devices="cpu")
                tools[name] = lambda batch: reranker.compute_score(pairs, batch_size=batch, max_length=512)
            else:
                from sentence_transformers import CrossEncoder

                model = CrossEncoder(model_dir, device="cpu", max_length=512)
                identity = torch.nn.Identity()
                tools[name] = lambda batch: model.predict(
                    pairs, batch_size=batch, activation_fn=identity, show_progress_bar=False
                ).tolist()
            tools[name](32)  # warm-up
        return tools[name]

    for line in sys.stdin:
        request = json.loads(line)
        run = tool(request["tool"])
        start = time.perf_counter()
        scores = run(request["batch"])
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "scores": scores}), flush=True)


if __name__ == "__main__":
    main()

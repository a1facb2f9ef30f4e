"""Layerwise inference time at cutoff layer k against the full depth, on SmolLM2-135M and real SQuAD pairs.

Stopping after layer k should cost about k / N of the full pass (plus the embedding and the fixed overhead).
Cutoffs are timed in alternation (k1 k2 ... k1 k2 ...) over several rounds; the median is reported.

    python benchmarks/layerwise_cutoff.py --pairs 64 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import append_results  # noqa: E402

from rerankforge.inference import LayerwiseReranker  # noqa: E402
from rerankforge.inference.modeling.layerwise import LayerwiseRerankerModel, decoder_layers  # noqa: E402
from rerankforge.inference.modeling.llm import llm_scoring_fields, load_causal_lm, load_tokenizer  # noqa: E402
from rerankforge.inference.modeling.llm_inputs import DEFAULT_PROMPT  # noqa: E402
from rerankforge.inference.modeling.spec import LayerwiseSpec  # noqa: E402

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
SQUAD = REPO.parent / "shared" / "data" / "squad-v1.1" / "dev-v1.1.json"


def squad_pairs(count: int) -> list[list[str]]:
    """Question-paragraph pairs from the first articles: real text of varying length."""
    pairs = []
    for article in json.loads(SQUAD.read_text())["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"][:1]:
                pairs.append([qa["question"], paragraph["context"]])
                if len(pairs) == count:
                    return pairs
    return pairs


def untrained_reranker(start_layer: int, dtype: torch.dtype) -> LayerwiseReranker:
    """SmolLM2 with "Yes"-initialised heads: the cost of a pass does not depend on trained weights."""
    lm = load_causal_lm(SMOLLM2, dtype)
    tokenizer = load_tokenizer(SMOLLM2)
    num_layers = len(decoder_layers(lm))
    spec = LayerwiseSpec(query_max_len=32, passage_max_len=192, max_length=224, base_model=SMOLLM2,
                         layers=list(range(start_layer, num_layers + 1)), num_layers=num_layers,
                         **llm_scoring_fields(tokenizer, DEFAULT_PROMPT))  # fmt: skip
    return LayerwiseReranker(LayerwiseRerankerModel(lm, spec), tokenizer, device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cutoffs", type=int, nargs="+", default=[8, 15, 22, 30])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()

    reranker = untrained_reranker(min(args.cutoffs), getattr(torch, args.dtype))
    full = reranker.layers[-1]
    pairs = squad_pairs(args.pairs)
    reranker.compute_score(pairs[: args.batch_size], cutoff_layers=[full])  # warm-up
    times: dict[int, list[float]] = {k: [] for k in args.cutoffs}
    for _ in range(args.rounds):
        for k in args.cutoffs:
            start = time.perf_counter()
            reranker.compute_score(pairs, cutoff_layers=[k], batch_size=args.batch_size)
            times[k].append(time.perf_counter() - start)
    full_median = statistics.median(times[full])
    lines = [
        "| cutoff layer k | k / N | median s | min s | max s | pairs/s | time / full depth |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in args.cutoffs:
        median = statistics.median(times[k])
        lines.append(
            f"| {k} | {k / full:.2f} | {median:.2f} | {min(times[k]):.2f} | {max(times[k]):.2f} | "
            f"{len(pairs) / median:.1f} | {median / full_median:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    command = "python benchmarks/layerwise_cutoff.py " + " ".join(sys.argv[1:])
    notes = (
        f"SmolLM2-135M-Instruct (N = {full} layers), {len(pairs)} SQuAD question-paragraph pairs, batch "
        f"{args.batch_size}, {args.dtype}, {args.rounds} alternating rounds; heads untrained (timing only)."
    )
    append_results(
        Path(args.results), "Layerwise reranker: inference time at cutoff k", command, table, notes
    )


if __name__ == "__main__":
    main()

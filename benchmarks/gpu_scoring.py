"""Scoring speed on one device: rerankforge's `Reranker` against sentence-transformers' `CrossEncoder.predict` and
a length-sorted plain transformers loop (FlagReranker's method), on one model folder and the same pairs.

Each tool is loaded once and warmed up on a slice of the pairs; then every tool scores all pairs once per round,
in turn (A B C A B C ...), so a drifting clock or a neighbour's load touches all of them alike. Same batch size
and max length for all; each pass includes its own tokenization, as a user's call does.
"""

from __future__ import annotations

import inspect
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from gpu_measure import (
    dense_fp16_peak_tflops,
    encoder_forward_flops,
    release_memory,
    timed,
)

Pairs = list[list[str]]
Scorer = Callable[[Pairs], list[float]]
RERANKFORGE = "rerankforge"
SENTENCE_TRANSFORMERS = "sentence-transformers CrossEncoder.predict"
REFERENCE = "transformers (length-sorted loop)"  # the tool the others' scores are compared with
MAX_BATCH_TOKENS = 16384  # the token-budget row, when rerankforge's compute_score has that option


class SortedLoop:
    """FlagReranker's method with plain transformers: tokenize every pair, sort by length (longest first),
    ``tokenizer.pad`` each batch, one forward, ``.logits.view(-1).float()``; scores back in input order."""

    def __init__(
        self, folder: Path, device: torch.device, dtype: torch.dtype, batch_size: int, max_length: int
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype).to(device).eval()
        self.device, self.batch_size, self.max_length = device, batch_size, max_length

    def encode(self, pairs: Pairs) -> list[dict[str, list[int]]]:
        encoded = self.tokenizer(
            [q for q, _ in pairs], [p for _, p in pairs], truncation="only_second", max_length=self.max_length
        )
        return [dict(zip(encoded.keys(), row, strict=True)) for row in zip(*encoded.values(), strict=True)]

    def lengths(self, pairs: Pairs) -> list[int]:
        """Real (unpadded) tokens of each pair: what the FLOP count is taken over."""
        return [len(feature["input_ids"]) for feature in self.encode(pairs)]

    @torch.inference_mode()
    def __call__(self, pairs: Pairs) -> list[float]:
        features = self.encode(pairs)
        order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
        scores = [0.0] * len(features)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = self.tokenizer.pad([features[i] for i in rows], return_tensors="pt")
            logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits.view(-1).float()
            for index, score in zip(rows, logits.tolist(), strict=True):
                scores[index] = score
        return scores


def rerankforge_scorers(
    folder: Path, device: torch.device, dtype: torch.dtype, batch_size: int
) -> dict[str, Scorer]:
    """rerankforge's public API; with a ``max_batch_tokens`` option (where `compute_score` has one), a second
    row that packs batches by tokens."""
    from rerankforge.inference import Reranker

    reranker = Reranker.from_pretrained(str(folder), device=device, dtype=dtype, batch_size=batch_size)
    scorers: dict[str, Scorer] = {
        RERANKFORGE: lambda pairs: reranker.compute_score(pairs, batch_size=batch_size, show_progress=False)
    }
    plain = Reranker.from_pretrained(str(folder), device=device, dtype=dtype, batch_size=batch_size)
    plain.prefetch = False  # what the encoding thread is worth: the same path without it
    scorers[f"{RERANKFORGE} (no prefetch thread)"] = lambda pairs: plain.compute_score(
        pairs, batch_size=batch_size, show_progress=False
    )
    if device.type == "cuda":  # measured before it is kept: compiled once in the warm-up (dynamic shapes)
        compiled = Reranker.from_pretrained(str(folder), device=device, dtype=dtype, batch_size=batch_size)
        compiled.model.backbone = torch.compile(compiled.model.backbone, dynamic=True)
        scorers[f"{RERANKFORGE} (torch.compile)"] = lambda pairs: compiled.compute_score(
            pairs, batch_size=batch_size, show_progress=False
        )
    if "max_batch_tokens" in inspect.signature(reranker.compute_score).parameters:
        scorers[f"{RERANKFORGE} (max_batch_tokens={MAX_BATCH_TOKENS})"] = lambda pairs: (
            reranker.compute_score(
                pairs, batch_size=batch_size, max_batch_tokens=MAX_BATCH_TOKENS, show_progress=False
            )
        )
    return scorers


def sentence_transformers_scorer(
    folder: Path, device: torch.device, dtype: torch.dtype, batch_size: int, max_length: int
) -> Scorer:
    """`CrossEncoder.predict` with raw logits (no sigmoid), the model cast to ``dtype``."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device=str(device), max_length=max_length)
    model.to(dtype)
    identity = torch.nn.Identity()

    def predict(pairs: Pairs) -> list[float]:
        scores = model.predict(pairs, batch_size=batch_size, activation_fn=identity, show_progress_bar=False)
        return [float(s) for s in scores]

    return predict


def load_scorers(
    folder: Path, device: torch.device, dtype: torch.dtype, batch_size: int, max_length: int
) -> tuple[dict[str, Scorer], SortedLoop]:
    """Every tool on one folder (the plain loop is also what the token counts come from)."""
    loop = SortedLoop(folder, device, dtype, batch_size, max_length)
    scorers = {
        **rerankforge_scorers(folder, device, dtype, batch_size),
        SENTENCE_TRANSFORMERS: sentence_transformers_scorer(folder, device, dtype, batch_size, max_length),
        REFERENCE: loop,
    }
    return scorers, loop


def max_abs_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def time_scorers(
    scorers: dict[str, Scorer], pairs: Pairs, warmup_pairs: int, rounds: int, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds of each full pass, per tool, in alternating rounds after one warm-up call each; the last
    round's scores."""
    for name, scorer in scorers.items():
        scorer(pairs[:warmup_pairs])  # first-call costs (kernel selection, allocator growth) stay out
        print(f"  warmed up {name}", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in scorers}
    scores: dict[str, list[float]] = {}
    for round_index in range(rounds):
        for name, scorer in scorers.items():
            elapsed, scores[name] = timed(lambda s=scorer: s(pairs), device)
            seconds[name].append(elapsed)
            print(f"  round {round_index + 1} {name}: {len(pairs) / elapsed:.0f} pairs/s", flush=True)
    return seconds, scores


def scoring_run(
    folder: Path,
    pairs: Pairs,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int,
    max_length: int,
    warmup_pairs: int,
    rounds: int,
) -> dict[str, Any]:
    """One model folder through every tool: pairs/s, achieved TFLOP/s and share of peak, score agreement."""
    scorers, loop = load_scorers(folder, device, dtype, batch_size, max_length)
    lengths = loop.lengths(pairs)
    flops = encoder_forward_flops(loop.model, lengths)
    peak = dense_fp16_peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    seconds, scores = time_scorers(scorers, pairs, warmup_pairs, rounds, device)
    tools = {}
    for name in scorers:
        median = statistics.median(seconds[name])
        tflops = flops / median / 1e12
        tools[name] = {
            "seconds": seconds[name],
            "pairs_per_s": len(pairs) / median,
            "pairs_per_s_min": len(pairs) / max(seconds[name]),
            "pairs_per_s_max": len(pairs) / min(seconds[name]),
            "tflops": tflops,
            "share_of_peak": tflops / peak if peak else None,
            "max_abs_diff_to_reference": max_abs_diff(scores[name], scores[REFERENCE]),
        }
    reference = scores[REFERENCE]
    del scorers, loop
    release_memory(device)
    return {
        "pairs": len(pairs),
        "real_tokens": sum(lengths),
        "mean_tokens": sum(lengths) / len(lengths),
        "max_tokens": max(lengths),
        "forward_flops": flops,
        "peak_tflops": peak,
        "score_std": statistics.pstdev(reference),
        "reference": REFERENCE,
        "tools": tools,
    }

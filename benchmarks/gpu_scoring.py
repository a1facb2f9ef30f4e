"""Scoring speed on one device: rerankforge's `Reranker` against sentence-transformers' `CrossEncoder.predict` and
a length-sorted plain transformers loop (FlagReranker's method), on one model folder and the same pairs.

Each tool is loaded once and warmed up on a slice of the pairs; then every tool scores all pairs once per round,
in turn (A B C A B C ...), so a drifting clock or a neighbour's load touches all of them alike. Same batch size
and max length for all; each pass includes its own tokenization, as a user's call does. Rounds stop at the part's
deadline (the first always runs), and the result says how many were done.

Like for like: a ``compiled`` part compiles rerankforge's and CrossEncoder's underlying transformers model the same
way (``torch.compile(model, dynamic=True)``), so neither tool alone gets a compiled row; the plain loop stays eager
as the reference the scores are compared with.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from gpu_measure import (
    Deadline,
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
COMPILED = " (torch.compile)"
MAX_BATCH_TOKENS = 16384  # the token-budget row of rerankforge's compute_score
# which tools a scoring part times: "eager" every rerankforge row (the prefetch thread's worth, the token budget);
# "compiled" both tools with torch.compile; "plain" the three tools as they come (the repeated-text workload)
KINDS = ("eager", "compiled", "plain")


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


def compile_model(model: torch.nn.Module, backend: str) -> torch.nn.Module:
    """The one way both tools' models are compiled: dynamic shapes (every batch has its own length), compiled on
    the first call, which the warm-up makes. ``backend`` "eager" (the smoke run) traces without generating code."""
    return torch.compile(model, dynamic=True, backend=backend)


def compile_cross_encoder(cross_encoder: Any, backend: str) -> None:
    """Compile the transformers model inside a CrossEncoder in place: the ``model`` child that is a
    `PreTrainedModel` (sentence-transformers 6: its Transformer module's; 5.x: the CrossEncoder's own). Both
    versions reach it through ``model(...)`` or ``model.forward``, which the compiled wrapper provides."""
    from transformers import PreTrainedModel

    for holder in cross_encoder.modules():
        child = dict(holder.named_children()).get("model")
        if isinstance(child, PreTrainedModel):
            holder.model = compile_model(child, backend)
            return
    raise TypeError(f"no transformers model found inside {type(cross_encoder).__name__}")


def rerankforge_scorer(reranker: Any, batch_size: int, **options: Any) -> Scorer:
    return lambda pairs: reranker.compute_score(pairs, batch_size=batch_size, show_progress=False, **options)


def cross_encoder_scorer(cross_encoder: Any, batch_size: int) -> Scorer:
    """`CrossEncoder.predict` with raw logits (no sigmoid)."""
    identity = torch.nn.Identity()

    def predict(pairs: Pairs) -> list[float]:
        scores = cross_encoder.predict(
            pairs, batch_size=batch_size, activation_fn=identity, show_progress_bar=False
        )
        return [float(s) for s in scores]

    return predict


@dataclass
class Tools:
    """One scoring part's loaded tools, by row name; the objects behind them for the truncation check."""

    scorers: dict[str, Scorer]
    loop: SortedLoop
    reranker: Any
    cross_encoder: Any


def load_tools(
    folder: Path, device: torch.device, dtype: torch.dtype, batch_size: int, max_length: int, kind: str,
    compile_backend: str,
) -> Tools:  # fmt: skip
    """Every tool of a ``kind`` of part on one folder. rerankforge loads with ``backend="torch"``: what "auto"
    picks on a GPU, and on the smoke run's CPU it skips the ONNX export and calibration."""
    from sentence_transformers import CrossEncoder

    from rerankforge.inference import Reranker

    def reranker() -> Any:
        return Reranker.from_pretrained(
            str(folder), device=device, dtype=dtype, batch_size=batch_size, backend="torch"
        )

    loop = SortedLoop(folder, device, dtype, batch_size, max_length)
    ours = reranker()
    cross_encoder = CrossEncoder(str(folder), device=str(device), max_length=max_length)
    cross_encoder.to(dtype)
    if kind == "compiled":
        ours.model.backbone = compile_model(ours.model.backbone, compile_backend)
        compile_cross_encoder(cross_encoder, compile_backend)
        scorers = {
            RERANKFORGE + COMPILED: rerankforge_scorer(ours, batch_size),
            SENTENCE_TRANSFORMERS + COMPILED: cross_encoder_scorer(cross_encoder, batch_size),
        }
    else:
        scorers = {RERANKFORGE: rerankforge_scorer(ours, batch_size)}
        if kind == "eager":
            plain = reranker()
            plain.prefetch = False  # what the encoding thread is worth: the same path without it
            scorers[f"{RERANKFORGE} (no prefetch thread)"] = rerankforge_scorer(plain, batch_size)
            scorers[f"{RERANKFORGE} (max_batch_tokens={MAX_BATCH_TOKENS})"] = rerankforge_scorer(
                ours, batch_size, max_batch_tokens=MAX_BATCH_TOKENS
            )
        scorers[SENTENCE_TRANSFORMERS] = cross_encoder_scorer(cross_encoder, batch_size)
    scorers[REFERENCE] = loop
    return Tools(scorers, loop, ours, cross_encoder)


def cross_encoder_ids(cross_encoder: Any, pairs: Pairs) -> list[list[int]]:
    """The ids `CrossEncoder.predict` gives its model: its own ``preprocess`` (sentence-transformers 6), else its
    tokenizer called as 5.x's predict calls it; padding dropped."""
    preprocess = getattr(cross_encoder, "preprocess", None)
    if preprocess is not None:
        features = preprocess(pairs)
    else:
        features = cross_encoder.tokenizer(
            [q for q, _ in pairs], [p for _, p in pairs], padding=True, truncation="longest_first",
            return_tensors="pt", max_length=cross_encoder.max_length,
        )  # fmt: skip
    rows = zip(features["input_ids"], features["attention_mask"], strict=True)
    return [ids[mask.bool()].tolist() for ids, mask in rows]


def truncation_check(tools: Tools, pairs: Pairs, max_length: int) -> dict[str, Any]:
    """Whether the tools cut long pairs alike. rerankforge (FlagReranker's rule): the question to 3/4 of
    max_length, then the passage until the pair fits; the plain loop: the passage only (``only_second``);
    CrossEncoder: the longer side first (``longest_first``). They give the same ids unless a question is longer
    than what the passage keeps: the pairs over ``max_length`` are encoded each tool's own way and compared."""
    from rerankforge.inference.modeling.pair_encoding import PairEncoder

    whole = tools.loop.tokenizer([q for q, _ in pairs], [p for _, p in pairs], verbose=False)["input_ids"]
    over = [pair for pair, ids in zip(pairs, whole, strict=True) if len(ids) > max_length]
    differ = {RERANKFORGE: 0, SENTENCE_TRANSFORMERS: 0}
    if over:
        reference = [feature["input_ids"] for feature in tools.loop.encode(over)]
        encoder = PairEncoder(tools.reranker.tokenizer, tools.reranker.lengths)
        ours = [e.ids for e in encoder.encode_encodings([q for q, _ in over], [p for _, p in over])]
        theirs = cross_encoder_ids(tools.cross_encoder, over)
        for tool, ids in ((RERANKFORGE, ours), (SENTENCE_TRANSFORMERS, theirs)):
            differ[tool] = sum(a != list(b) for a, b in zip(ids, reference, strict=True))
    return {
        "max_length": max_length,
        "pairs_over_max_length": len(over),
        "ids_differ_from_plain_loop": differ,
    }


def max_abs_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


@dataclass
class Timing:
    """Each tool's warm-up call and timed passes; the last round's scores."""

    warmup_s: dict[str, float]
    seconds: dict[str, list[float]]
    scores: dict[str, list[float]]
    rounds_done: int


def time_scorers(
    scorers: dict[str, Scorer], pairs: Pairs, warmup_pairs: int, rounds: int, device: torch.device,
    deadline: Deadline,
) -> Timing:  # fmt: skip
    """Seconds of each full pass, per tool, in alternating rounds after one warm-up call each (where compiled
    tools compile); a round starts only if one more, as long as the last, ends before the deadline."""
    warmup_s = {}
    for (
        name,
        scorer,
    ) in scorers.items():  # first-call costs (compilation, kernel choice) stay out of the rounds
        warmup_s[name], _ = timed(lambda s=scorer: s(pairs[:warmup_pairs]), device)
        print(f"  warmed up {name} ({warmup_s[name]:.1f} s)", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in scorers}
    scores: dict[str, list[float]] = {}
    last_round = 0.0
    for round_index in range(rounds):
        if round_index and not deadline.fits(last_round):
            print(f"  deadline: {round_index} of {rounds} rounds done", flush=True)
            return Timing(warmup_s, seconds, scores, round_index)
        start = time.perf_counter()
        for name, scorer in scorers.items():
            elapsed, scores[name] = timed(lambda s=scorer: s(pairs), device)
            seconds[name].append(elapsed)
            print(f"  round {round_index + 1} {name}: {len(pairs) / elapsed:.0f} pairs/s", flush=True)
        last_round = time.perf_counter() - start
    return Timing(warmup_s, seconds, scores, rounds)


def tool_rows(timing: Timing, pairs: int, flops: float, peak: float | None) -> dict[str, dict[str, Any]]:
    """Each tool's pairs/s (median, min, max), TFLOP/s, share of peak and score difference to the plain loop."""
    rows = {}
    for name, seconds in timing.seconds.items():
        median = statistics.median(seconds)
        tflops = flops / median / 1e12
        rows[name] = {
            "seconds": seconds,
            "warmup_s": timing.warmup_s[name],
            "pairs_per_s": pairs / median,
            "pairs_per_s_min": pairs / max(seconds),
            "pairs_per_s_max": pairs / min(seconds),
            "tflops": tflops,
            "share_of_peak": tflops / peak if peak else None,
            "max_abs_diff_to_reference": max_abs_diff(timing.scores[name], timing.scores[REFERENCE]),
        }
    return rows


def scoring_run(
    folder: Path,
    pairs: Pairs,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int,
    max_length: int,
    warmup_pairs: int,
    rounds: int,
    deadline: Deadline,
    kind: str = "eager",
    compile_backend: str = "inductor",
) -> dict[str, Any]:
    """One model folder through a ``kind`` of tools: pairs/s, achieved TFLOP/s and share of peak, agreement of the
    scores and of the truncation."""
    tools = load_tools(folder, device, dtype, batch_size, max_length, kind, compile_backend)
    lengths = tools.loop.lengths(pairs)
    flops = encoder_forward_flops(tools.loop.model, lengths)
    peak = dense_fp16_peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    truncation = truncation_check(tools, pairs, max_length)
    timing = time_scorers(tools.scorers, pairs, warmup_pairs, rounds, device, deadline)
    reference = timing.scores[REFERENCE]
    del tools
    release_memory(device)
    return {
        "kind": kind,
        "ours": next(iter(timing.seconds)),
        "pairs": len(pairs),
        "distinct_passages": len({p for _, p in pairs}),
        "real_tokens": sum(lengths),
        "mean_tokens": sum(lengths) / len(lengths),
        "max_tokens": max(lengths),
        "forward_flops": flops,
        "peak_tflops": peak,
        "score_std": statistics.pstdev(reference),
        "reference": REFERENCE,
        "truncation": truncation,
        "rounds_planned": rounds,
        "rounds_done": timing.rounds_done,
        "stopped_at_deadline": timing.rounds_done < rounds,
        "compile_backend": compile_backend if kind == "compiled" else None,
        "tools": tool_rows(timing, len(pairs), flops, peak),
    }

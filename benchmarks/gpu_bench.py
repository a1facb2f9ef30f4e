"""GPU speed in one run of at most 5 minutes (`--budget-s`, default 300): scoring, cross-encoder training and LLM
LoRA steps on an H100 or H200, on random-weight models in real shapes. With the GPU machine's 1-2 minute start
that is 7 minutes of a 15-minute lease, which leaves room to rerun a failed part (`--parts`) in the same lease.

The run is a list of parts, in this order: set-up (SQuAD, pairs, trained tokenizers); scoring of each encoder
shape; cross-encoder training; each LLM LoRA variant; scoring with torch.compile; scoring on repeated texts
(optional). Each part

- appends its result the moment it ends, as a JSON line to ``<out>.jsonl`` (written, flushed and fsynced) and as a
  markdown section to ``--results``, and rewrites ``--out`` (the full JSON so far), so a kill at the command's
  time limit or a crash in a later part keeps every part before it; SIGTERM, SIGINT and SIGHUP also record that
  the run was stopped, and in which part;
- starts only if its expected time (``Settings.expected_s``: its model saves and loads, tokenizer training,
  torch.compile's compilation and warm-up included) still fits the budget, else it is recorded as skipped;
- stops at its own deadline (1.5 x its expected time, never past the budget): the first timed round or step
  always runs, later ones only if they fit, and the result says how many were done (``rounds_done``,
  ``timed_steps``, ``stopped_at_deadline``);
- records its error instead of raising it, so one failure does not lose the other numbers of a lease.

1. Scoring pairs/s of rerankforge's `Reranker.compute_score` against sentence-transformers' `CrossEncoder.predict`
   and a length-sorted plain transformers loop (FlagReranker's method), for MiniLM-L6 (BERT 6x384),
   bge-reranker-base (XLM-R 12x768) and bge-reranker-large (XLM-R 24x1024) shapes: 4,000 SQuAD question /
   paragraph pairs with every passage distinct (rerankforge tokenizes a repeated text once, the others for every
   pair), fp16, batch 128, max length 512, medians of 3 alternating rounds after a warm-up; achieved TFLOP/s over
   real tokens only (`gpu_measure.encoder_forward_flops`) and the share of the GPU's dense fp16 peak; each tool's
   largest score difference to the plain loop and how many long pairs each tool cuts differently. Then
   bge-reranker-base with both tools' models compiled alike (`torch.compile(model, dynamic=True)`), and, if time
   is left, MiniLM-L6 on SQuAD's repeated paragraphs as they are (a second, labelled workload).
2. Training: the bge-reranker-base shape through rerankforge's real trainer (bf16 autocast), steps/s and peak
   memory; LoRA steps of a Qwen2-1.5B-shaped decoder, with and without gradient checkpointing, sdpa and (where
   flash-attn is installed) flash attention 2, each scored rerankforge's way (last position's "Yes" logit only)
   and FlagEmbedding's (the LM head over all 151,936 vocabulary entries at every position).

``--smoke`` runs the same code on the CPU with tiny configs (64 pairs, 1 round, 1 step, fp32; torch.compile
traces with its "eager" backend) in well under a minute; tests/test_benchmarks.py runs it, so this script cannot
rot. On the GPU machine (benchmarks/README.md has the whole command):

    timeout -k 15 330 python3 benchmarks/gpu_bench.py --out $OUT/bench-gpu.json --results $OUT/RESULTS-gpu.md
    python benchmarks/gpu_bench.py --smoke --out /tmp/smoke.json --results /tmp/smoke.md
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from gpu_measure import Budget, Deadline, peak_memory_kind, process_start, release_memory  # noqa: E402
from gpu_scoring import RERANKFORGE  # noqa: E402
from machine import append_results, describe_machine  # noqa: E402

SECTIONS = ("scoring", "cross_encoder_training", "llm_lora")
VERSIONED = ("torch", "transformers", "sentence-transformers", "peft", "accelerate", "datasets", "tokenizers",
             "flash-attn")  # fmt: skip
SCORING_KEYS = {"eager": "scoring", "compiled": "scoring_compiled", "plain": "scoring_repeated"}
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
SETUP = "set-up"


@dataclass(frozen=True)
class Settings:
    """Everything a run's numbers depend on; the smoke run changes sizes, dtype and device, not code paths."""

    mode: str  # "full" or "smoke"
    device: str
    scoring_dtype: str
    bf16: bool  # training precision: bf16 autocast / bf16 weights, else fp32
    pairs: int
    per_query: int  # each question with its own paragraph and per_query - 1 others of its article
    batch_size: int
    max_length: int
    rounds: int
    warmup_pairs: int
    ce_batch_groups: int
    ce_steps: int  # timed cross-encoder steps: the Trainer's step ends are exact to one step, so many of them
    llm_batch_groups: int
    warmup_steps: int
    steps: int
    tokenizer_texts: int | None  # how many SQuAD texts the trained tokenizers learn from (None: all)
    xlmr_vocab: int
    decoder_vocab: int
    compile_backend: str  # torch.compile's backend for the compiled part ("eager" on the smoke run's CPU)
    compiled_shapes: tuple[str, ...]  # shapes scored again with both tools compiled
    repeated_shapes: tuple[str, ...]  # shapes scored again on SQuAD's repeated paragraphs (optional parts)
    # seconds each part is expected to take on an H100/H200, its saves, loads, tokenizer training and compilation
    # included (estimates: the first GPU run's `seconds` per part replace them); a part starts only if that still
    # fits the budget, and stops at 1.5 x that. 0 or absent (the smoke run): no estimate, the budget is the limit
    expected_s: dict[str, float] = field(default_factory=dict)


FULL = Settings(
    mode="full", device="cuda", scoring_dtype="float16", bf16=True, pairs=4_000, per_query=5,
    batch_size=128, max_length=512, rounds=3, warmup_pairs=512, ce_batch_groups=16, ce_steps=30,
    llm_batch_groups=4, warmup_steps=3, steps=10, tokenizer_texts=None, xlmr_vocab=30_000, decoder_vocab=30_000,
    compile_backend="inductor", compiled_shapes=("bge-reranker-base",), repeated_shapes=("minilm-l6",),
    # estimates, not yet measured on a GPU: host-bound passes of ~1.5 s (4,000 pairs at ~2,500 pairs/s for
    # CrossEncoder and the loop), 5 tools x 3 rounds, model saves and loads, the first part's imports; ~40 s
    # for each of the two compilations. With ~8 s of imports: 282 s of the 300
    expected_s={
        SETUP: 15, "scoring/minilm-l6": 25, "scoring/bge-reranker-base": 28, "scoring/bge-reranker-large": 38,
        "cross-encoder-training": 25, "llm-lora/*": 12, "scoring-compiled/bge-reranker-base": 80,
        "scoring-repeated/minilm-l6": 15,
    },
)  # fmt: skip
SMOKE = Settings(
    mode="smoke", device="cpu", scoring_dtype="float32", bf16=False, pairs=64, per_query=4,
    batch_size=16, max_length=512, rounds=1, warmup_pairs=8, ce_batch_groups=2, ce_steps=1,
    llm_batch_groups=1, warmup_steps=1, steps=1, tokenizer_texts=400, xlmr_vocab=1000, decoder_vocab=1000,
    compile_backend="eager", compiled_shapes=("bge-reranker-base",), repeated_shapes=("minilm-l6",),
)  # fmt: skip


def expected_seconds(settings: Settings, part: str) -> float:
    """A part's expected seconds: its own entry, else the first pattern that matches it (``llm-lora/*``)."""
    if part in settings.expected_s:
        return settings.expected_s[part]
    return next((s for p, s in settings.expected_s.items() if fnmatch.fnmatchcase(part, p)), 0.0)


def progress(budget: Budget, message: str) -> None:
    print(f"[{budget.elapsed():6.0f} s] {message}", flush=True)


@dataclass(frozen=True)
class Part:
    """One piece of the run, recorded the moment it ends."""

    name: str  # what --parts matches, e.g. "scoring/bge-reranker-base"
    section: str
    title: str  # its markdown heading
    path: tuple[str, ...]  # where its result goes in the full results
    run: Callable[[Deadline], dict[str, Any]]
    table: Callable[[dict[str, Any]], str]  # a finished result as markdown
    needs: tuple[str, ...] = ()  # the tokenizers ("bert", "xlm-roberta", "decoder") set-up must make for it
    optional: bool = False  # skipped for time: recorded as not run, not as incomplete


# --- outputs that survive a kill ----------------------------------------------------------------------------


def append_durably(path: Path, text: str) -> None:
    """One ``os.write`` in append mode, then fsync: a reader or a kill sees the whole text or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = text.encode("utf-8")
        while data:
            data = data[os.write(descriptor, data) :]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_durably(path: Path, text: str) -> None:
    """Write a temporary file beside ``path`` and rename it over: ``path`` is always one whole version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def lines_path(out: Path) -> Path:
    """The JSON lines beside ``--out``: bench-gpu.json -> bench-gpu.jsonl."""
    return out.with_suffix(".parts.jsonl") if out.suffix == ".jsonl" else out.with_suffix(".jsonl")


class Recorder:
    """Appends each part's result the moment it ends: its markdown section, the full JSON so far, and last the
    JSON line that marks the part as written (whoever sees the line finds the rest). A stop signal that arrives
    while it writes waits for the write to end; one that arrives at any other time is recorded (`stop`) and ends
    the process."""

    def __init__(self, out: Path, markdown: Path, run_id: str):
        self.out, self.lines, self.markdown, self.run_id = out, lines_path(out), markdown, run_id
        self.current: str | None = None  # the part under way, for the stop record
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.on_stop: Callable[[int], None] = lambda signum: os._exit(128 + signum)
        self._writing = False
        self._pending: tuple[int, float | None] | None = None
        self._stopping = False

    def line(self, record: dict[str, Any]) -> None:
        append_durably(self.lines, json.dumps({"run": self.run_id, **record}, default=str) + "\n")

    @contextmanager
    def writing(self) -> Iterator[None]:
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
            if self._pending is not None:
                self.stop(*self._pending)

    def start(self, record: dict[str, Any], title: str, command: str, intro: str) -> None:
        with self.writing():
            self.markdown.parent.mkdir(parents=True, exist_ok=True)
            append_results(self.markdown, title, command, intro)
            self.line({"part": "start", **record})

    def part(self, part: Part, result: dict[str, Any], seconds: float, elapsed: float, snapshot: str) -> None:
        with self.writing():
            append_durably(self.markdown, part_markdown(part, result, seconds))
            replace_durably(self.out, snapshot)
            self.line({"part": part.name, "section": part.section, "status": status(result),
                       "seconds": round(seconds, 3), "elapsed_s": round(elapsed, 3), "result": result})  # fmt: skip
            self.outcomes[part.name] = result
            self.current = None

    def finish(self, record: dict[str, Any], notes: str, snapshot: str) -> None:
        with self.writing():
            append_durably(self.markdown, f"\n### Notes\n\n{notes}\n")
            replace_durably(self.out, snapshot)
            self.line({"part": "end", **record})

    def stop(self, signum: int, elapsed: float | None = None) -> None:
        """The signal handler's work: record the stop (the parts before it are already written), then end."""
        if self._writing:
            self._pending = (signum, elapsed)
            return
        if self._stopping:
            return
        self._stopping = True
        name = signal.Signals(signum).name
        during = self.current or "between parts"
        when = f" after {elapsed:.0f} s" if elapsed is not None else ""
        try:
            append_durably(
                self.markdown,
                f"\n### Run stopped by {name}{when}, during {during}\n\nEvery part above it is complete; "
                "the ones after it did not run.\n",
            )
            self.line({"part": "stopped", "signal": name, "during": during, "elapsed_s": elapsed})
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(
                    Exception
                ):  # a flush re-entered from the handler must not keep us alive
                    stream.flush()
            self.on_stop(signum)


def install_stop_handler(recorder: Recorder, budget: Budget) -> None:
    """SIGTERM (what `timeout` sends), SIGINT and SIGHUP record the stop and end the run at once."""

    def handler(signum: int, frame: Any) -> None:
        recorder.stop(signum, budget.elapsed())

    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, handler)


# --- the parts ----------------------------------------------------------------------------------------------


def status(result: dict[str, Any]) -> str:
    if "error" in result:
        return "failed"
    if "skipped" in result:
        return "skipped"
    if "not_run" in result:
        return "not run"
    return "stopped at deadline" if result.get("stopped_at_deadline") else "done"


def guarded(budget: Budget, name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A part's run with its error recorded (type, message, the traceback's end) rather than raised."""
    try:
        return run()
    except Exception as error:  # noqa: BLE001 - recorded in the results and printed in full
        traceback.print_exc()
        progress(budget, f"{name}: FAILED ({type(error).__name__}: {error})")
        failure = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
    # out of the except block the traceback's frames, which hold the part's tensors, are gone: free their memory
    # for the next part (after an out-of-memory error above all)
    release_memory(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return failure


class PartOverran(Exception):
    """A part still running this long past its deadline: a load, warm-up or compilation (where the deadline is
    not checked) overran. Raised by SIGALRM inside the part, so `guarded` records it and the next part runs."""


HARD_LIMIT_GRACE_S = 20.0  # past a part's deadline; the budget (300 s) + this stays inside `timeout 330`


@contextmanager
def hard_limit(seconds: float, name: str) -> Iterator[None]:
    """Interrupt the part ``seconds`` from now (Python runs the handler between bytecodes, so a single long C
    call ends first); disarmed before the part's result is written."""

    def overran(signum: int, frame: Any) -> None:
        raise PartOverran(f"{name} still running {HARD_LIMIT_GRACE_S:.0f} s past its deadline: stopped")

    previous = signal.signal(signal.SIGALRM, overran)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def store(results: dict[str, Any], path: tuple[str, ...], result: dict[str, Any]) -> None:
    target = results
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = result


def run_part(
    part: Part, settings: Settings, budget: Budget, recorder: Recorder, results: dict[str, Any]
) -> dict:
    """Skip the part when its expected time no longer fits, else run it to its deadline; record it either way."""
    expected = expected_seconds(settings, part.name)
    start = time.monotonic()
    if not budget.allows(expected):
        result = budget.skipped(expected)
        if part.optional:
            result = {"not_run": f"optional part, {result['skipped']}"}
        progress(budget, f"{part.name}: {status(result)} ({next(iter(result.values()))})")
    else:
        deadline = budget.deadline(expected)
        progress(budget, f"{part.name}: start (expects {expected:.0f} s, stops by {deadline.left():.0f} s)")
        recorder.current = part.name
        with hard_limit(deadline.left() + HARD_LIMIT_GRACE_S, part.name):
            result = guarded(budget, part.name, lambda: part.run(deadline))
        progress(budget, f"{part.name}: {status(result)} in {time.monotonic() - start:.0f} s")
    seconds = time.monotonic() - start
    store(results, part.path, result)
    results["elapsed_s"] = budget.elapsed()
    recorder.part(part, result, seconds, budget.elapsed(), json.dumps(results, indent=2, default=str))
    return result


class Workspace:
    """The run's temporary folder, SQuAD groups and pairs, trained tokenizers, and each model folder saved once
    (the bge-reranker-base folder serves scoring and training alike)."""

    def __init__(self, root: Path, settings: Settings):
        from gpu_models import ENCODERS

        self.root, self.settings = root, settings
        self.device = torch.device(settings.device)
        self.encoders = {shape.name: shape for shape in ENCODERS[settings.mode]}
        self.groups: list[dict[str, Any]] = []
        self.pairs: dict[bool, list[list[str]]] = {}  # distinct passages or not -> pairs
        self.tokenizers: dict[str, Any] = {}
        self._folders: dict[str, Path] = {}

    def set_up(self, model_types: Sequence[str]) -> dict[str, Any]:
        """SQuAD, both pair sets and the tokenizers the chosen parts need: the run's first part."""
        from gpu_models import (
            byte_level_tokenizer,
            corpus_texts,
            minilm_tokenizer,
            scoring_pairs,
            squad_groups,
            squad_path,
            xlmr_style_tokenizer,
        )

        s = self.settings
        self.groups = squad_groups(squad_path(), negatives=15)
        texts = corpus_texts(self.groups)[: s.tokenizer_texts]
        self.pairs = {d: scoring_pairs(self.groups, s.pairs, s.per_query, distinct=d) for d in (True, False)}
        make = {
            "bert": minilm_tokenizer,
            "xlm-roberta": lambda: xlmr_style_tokenizer(texts, s.xlmr_vocab),
            "decoder": lambda: byte_level_tokenizer(texts, s.decoder_vocab),
        }
        for model_type in dict.fromkeys(model_types):
            self.tokenizers[model_type] = make[model_type]()
        return {
            "questions": len(self.groups),
            "tokenizer_texts": len(texts),
            "pairs": len(self.pairs[True]),
            "distinct_passages": {
                "distinct": len({p for _, p in self.pairs[True]}),
                "repeated": len({p for _, p in self.pairs[False]}),
            },
            "tokenizers": {name: len(tokenizer) for name, tokenizer in self.tokenizers.items()},
        }

    def encoder_folder(self, name: str) -> Path:
        from gpu_models import save_encoder

        if name not in self._folders:
            shape = self.encoders[name]
            dtype = getattr(torch, self.settings.scoring_dtype)
            folder = self.root / name
            save_encoder(shape, self.tokenizers[shape.model_type], folder, dtype, self.device)
            self._folders[name] = folder
        return self._folders[name]


def setup_part(work: Workspace, needs: Sequence[str]) -> Part:
    def table(result: dict[str, Any]) -> str:
        trained = ", ".join(f"{k} {v}" for k, v in result["tokenizers"].items())
        distinct = result["distinct_passages"]
        return (
            "| SQuAD questions | tokenizer texts | scoring pairs | distinct passages (headline / repeated) | "
            "tokenizer sizes |\n|---|---|---|---|---|\n"
            f"| {result['questions']} | {result['tokenizer_texts']} | {result['pairs']} | {distinct['distinct']} / "
            f"{distinct['repeated']} | {trained} |"
        )

    title = "Set-up: SQuAD v1.1 dev, scoring pairs, tokenizers"
    return Part(SETUP, "setup", title, ("setup",), lambda deadline: work.set_up(needs), table)


def scoring_part(work: Workspace, name: str, kind: str) -> Part:
    """One shape through one ``kind`` of tools (gpu_scoring.KINDS)."""
    from gpu_scoring import scoring_run

    s, shape = work.settings, work.encoders[name]
    distinct = kind != "plain"

    def run(deadline: Deadline) -> dict[str, Any]:
        result = scoring_run(work.encoder_folder(name), work.pairs[distinct], work.device,
                             getattr(torch, s.scoring_dtype), s.batch_size, s.max_length, s.warmup_pairs,
                             s.rounds, deadline, kind, s.compile_backend)  # fmt: skip
        return {"shape": shape.describe(), **result}

    prefix = {"eager": "scoring", "compiled": "scoring-compiled", "plain": "scoring-repeated"}[kind]
    title = {
        "eager": f"Scoring {name} ({shape.describe()}): every passage distinct",
        "compiled": f"Scoring {name} ({shape.describe()}), both tools' models compiled "
        "(`torch.compile(model, dynamic=True)`): every passage distinct",
        "plain": f"Scoring {name} ({shape.describe()}): SQuAD's paragraphs repeated as they come (a second "
        "workload: rerankforge tokenizes each distinct text once, the other tools every pair's)",
    }[kind]
    workload = ", SQuAD's paragraphs repeated" if kind == "plain" else ""
    return Part(f"{prefix}/{name}", "scoring", title, (SCORING_KEYS[kind], name), run,
                lambda result: scoring_table({name: result}, workload), needs=(shape.model_type,),
                optional=kind == "plain")  # fmt: skip


def cross_encoder_part(work: Workspace) -> Part:
    """The bge-reranker-base shape through rerankforge's trainer, on SQuAD groups of 8."""

    def run(deadline: Deadline) -> dict[str, Any]:
        import training_speed
        from gpu_training import cross_encoder_training, write_groups

        s = work.settings
        lines = max(256, s.ce_batch_groups * (s.warmup_steps + s.ce_steps))
        data = write_groups(work.groups, work.root / "train.jsonl", lines, training_speed.GROUP_SIZE - 1)
        result = cross_encoder_training(work.encoder_folder(name), data, work.root / "ce-train", work.device,
                                        s.bf16, s.ce_batch_groups, s.warmup_steps, s.ce_steps, deadline)  # fmt: skip
        return {"shape": work.encoders[name].describe(), **result}

    name = "bge-reranker-base"
    title = "Cross-encoder training (rerankforge's trainer)"
    return Part("cross-encoder-training", "cross_encoder_training", title, ("cross_encoder_training",), run,
                training_table, needs=(work.encoders[name].model_type,))  # fmt: skip


def flash_attention_available(device: torch.device) -> bool:
    return device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None


def llm_parts(work: Workspace) -> list[Part]:
    """Each LoRA variant as its own part: a fresh model, its own peak memory."""
    from gpu_models import DECODERS
    from gpu_training import lora_variant_run, lora_variants

    s = work.settings
    attentions = ["sdpa"] + (["flash_attention_2"] if flash_attention_available(work.device) else [])

    def run(variant: Any, deadline: Deadline) -> dict[str, Any]:
        return lora_variant_run(variant, DECODERS[s.mode], work.tokenizers["decoder"], work.groups,
                                work.root / "llm", work.device, s.bf16, s.llm_batch_groups, s.warmup_steps,
                                s.steps, deadline)  # fmt: skip

    def part(variant: Any) -> Part:
        label = variant.label()
        return Part(f"llm-lora/{label.replace(', ', '-').replace(' ', '-')}", "llm_lora",
                    f"LLM LoRA steps: {label}", ("llm_lora", "variants", label), functools.partial(run, variant),
                    lambda result: llm_table({label: result}), needs=("decoder",))  # fmt: skip

    return [part(variant) for variant in lora_variants(attentions)]


def plan(work: Workspace) -> list[Part]:
    """Every part after set-up, most wanted first: a part that no longer fits the budget is skipped."""
    s = work.settings
    return [
        *(scoring_part(work, name, "eager") for name in work.encoders),
        # the like-for-like compiled rows belong with the scoring table: not left to whatever time remains
        *(scoring_part(work, name, "compiled") for name in s.compiled_shapes),
        cross_encoder_part(work),
        *llm_parts(work),
        *(scoring_part(work, name, "plain") for name in s.repeated_shapes),
    ]


def chosen(part: Part, sections: Sequence[str], patterns: Sequence[str]) -> str | None:
    """Why a part is left out (None: it runs)."""
    if part.section not in sections:
        return "not among --sections"
    if not any(fnmatch.fnmatchcase(part.name, pattern) for pattern in patterns):
        return "not among --parts"
    return None


# --- tables and notes ---------------------------------------------------------------------------------------


def package_versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    found["cuda"] = str(torch.version.cuda)
    return found


def _cell(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _reason(result: dict[str, Any]) -> str | None:
    if "not_run" in result:
        return f"not run: {result['not_run']}"
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    if "error" in result:
        return f"failed: {result['error']}"
    return None


def done_line(result: dict[str, Any]) -> str:
    """How much of a part ran: rounds or timed steps done of those planned, and whether its deadline cut it."""
    if "rounds_done" in result:
        done, planned, unit = result["rounds_done"], result["rounds_planned"], "rounds"
    elif "steps_planned" in result:
        done, planned, unit = result["timed_steps"], result["steps_planned"], "timed steps"
    else:
        return ""
    cut = "; stopped at its deadline" if result.get("stopped_at_deadline") else ""
    return f"{done} of {planned} {unit}{cut}"


def part_markdown(part: Part, result: dict[str, Any], seconds: float) -> str:
    """A part's section: its table, or why it has none, and how long it took."""
    head = f"\n### {part.title}\n\n"
    if reason := _reason(result):
        return f"{head}{part.name}: {reason} ({seconds:.0f} s).\n"
    extent = done_line(result)
    return f"{head}{part.table(result)}\n\n{part.name}: {seconds:.0f} s{'; ' + extent if extent else ''}.\n"


def scoring_table(scoring: dict[str, dict[str, Any]], workload: str = "") -> str:
    """One row per shape and tool: pairs/s, rerankforge's ratio, TFLOP/s, share of peak, score difference;
    ``workload`` labels rows that are not the headline pairs."""
    lines = [
        "| shape | tool | pairs/s median (min-max) | rerankforge / tool | TFLOP/s (real tokens) | "
        "share of dense fp16 peak | max abs score diff to the plain loop | warm-up call s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in scoring.items():
        if reason := _reason(result):
            lines.append(f"| {name} | ({reason}) | - | - | - | - | - | - |")
            continue
        ours = result["tools"][result.get("ours", RERANKFORGE)]["pairs_per_s"]
        for tool, row in result["tools"].items():
            lines.append(
                f"| {name} ({result['shape']}){workload} | {tool} | {row['pairs_per_s']:.0f} ({row['pairs_per_s_min']:.0f}-"
                f"{row['pairs_per_s_max']:.0f}) | {ours / row['pairs_per_s']:.2f}x | {row['tflops']:.3g} | "
                f"{_cell(row['share_of_peak'], '{:.1%}')} | {row['max_abs_diff_to_reference']:.1e} | "
                f"{row['warmup_s']:.1f} |"
            )
    return "\n".join(lines)


def training_table(result: dict[str, Any]) -> str:
    lines = [
        "| model | precision | batch (groups x group size) | steps/s | groups/s | peak memory MB | "
        "real / padded tokens per step |",
        "|---|---|---|---|---|---|---|",
    ]
    if reason := _reason(result):
        return "\n".join([*lines, f"| cross-encoder | ({reason}) | - | - | - | - | - |"])
    lines.append(
        f"| {result['model']} ({result['shape']}) | {result['precision']} | {result['batch_groups']} x "
        f"{result['group_size']} | {result['steps_per_s']:.2f} | {result['groups_per_s']:.1f} | "
        f"{result['peak_memory_mb']:.0f} | {result['real_tokens_per_step']:.0f} / {result['padded_tokens_per_step']:.0f} |"
    )
    return "\n".join(lines)


def llm_table(variants: dict[str, dict[str, Any]]) -> str:
    from gpu_training import WAY_LABELS

    lines = [
        "| scoring | attention | gradient checkpointing | step s (median) | steps/s | peak memory MB | "
        "rows / real tokens per step |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in variants.items():
        if reason := _reason(row):
            lines.append(f"| {label} | ({reason}) | - | - | - | - | - |")
            continue
        lines.append(
            f"| {WAY_LABELS[row['way']]} | {row['attention']} | {'on' if row['checkpointing'] else 'off'} | "
            f"{row['step_s_median']:.3f} | {row['steps_per_s']:.2f} | {row['peak_memory_mb']:.0f} | "
            f"{row['rows_per_step']} / {row['real_tokens_per_step']:.0f} |"
        )
    return "\n".join(lines)


TRUNCATION_RULES = (
    "Truncation: rerankforge cuts the question to 384 tokens, then the passage until the pair fits 512 "
    "(FlagReranker's rule, its stand-in for folders without rerankforge.json); the plain loop cuts the "
    'passage only (`truncation="only_second"`, 512); `CrossEncoder(max_length=512)` cuts the longer side '
    "first (`longest_first`). The ids are the same unless a question outgrows what its passage keeps"
)


def truncation_note(results: dict[str, Any]) -> str:
    """The tools' truncation rules and what they came to on these pairs."""
    measured = [
        f"{name}: {r['truncation']['pairs_over_max_length']} pairs over {r['truncation']['max_length']} tokens, "
        + ", ".join(f"{tool} {n}" for tool, n in r["truncation"]["ids_differ_from_plain_loop"].items())
        + " cut differently"
        for name, r in results["scoring"].items()
        if "truncation" in r
    ]
    return f"{TRUNCATION_RULES}; measured on the headline pairs ({'; '.join(measured) or '-'})."


def notes(results: dict[str, Any]) -> str:
    """What the tables were measured on and how (appended after the parts)."""
    s = results["settings"]
    scored = {name: r for name, r in results["scoring"].items() if "tools" in r}
    tokens = ", ".join(f"{name} {r['mean_tokens']:.0f}" for name, r in scored.items())
    peak = next((r["peak_tflops"] for r in scored.values() if r["peak_tflops"]), None)
    llm = results["llm_lora"]
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    cut = [name for name, r in results["outcomes"].items() if r.get("stopped_at_deadline")]
    return (
        f"{'SMOKE RUN (tiny configs on the CPU: checks the code paths, the numbers mean nothing). ' if s['mode'] == 'smoke' else ''}"
        f"Device: {results['machine']['gpu']}; versions: {versions}. Random-weight models built from configs; "
        "MiniLM uses its real WordPiece tokenizer, the XLM-R shapes a Unigram tokenizer trained here on SQuAD text "
        f"({s['xlmr_vocab']} pieces asked for; XLM-R's own vocabulary is not available) with the model's vocab_size "
        "kept at 250,002 so the embedding has the real shape; the decoder a byte-level BPE trained here, with "
        f"Qwen2's 151,936-row embedding and LM head. Scoring: {s['pairs']} SQuAD v1.1 dev pairs, each question "
        f"with its own paragraph and {s['per_query'] - 1} other paragraphs of its article, every passage made "
        "distinct by the pair's index appended (SQuAD's paragraphs serve about 5 questions each, and rerankforge "
        "tokenizes a repeated text once where the other tools tokenize every pair's; questions still recur over "
        f"their candidates, as in any reranking call); mean real tokens per pair: {tokens or '-'}; "
        f"{s['scoring_dtype']}, batch {s['batch_size']}, max length {s['max_length']}, every tool on the same "
        f"folder and pairs, warmed up on {s['warmup_pairs']} pairs, then up to {s['rounds']} alternating rounds; "
        "each pass includes its tokenization. rerankforge: `Reranker.from_pretrained(folder, dtype=..., "
        'backend="torch")`, `compute_score(pairs, batch_size=...)`; sentence-transformers: `CrossEncoder(folder, '
        "max_length=512)` cast to the dtype, `predict(..., activation_fn=Identity)`; plain loop: FlagReranker's "
        "method (tokenize all, sort by length, `tokenizer.pad` per batch, `.logits.view(-1).float()`). "
        f"{truncation_note(results)} torch.compile: both tools' underlying transformers model compiled alike, "
        f"`torch.compile(model, dynamic=True, backend={s['compile_backend']!r})`, compiled in the warm-up call "
        "(its seconds are in the table); the plain loop stays eager as the reference. "
        "TFLOP/s = forward FLOPs over real tokens only (padding is not counted) / median seconds, FLOPs = "
        "2 x (encoder-layer weights) x real tokens + 4 x layers x hidden x sum(length^2) (attention scores and "
        "weighted sums) + 2 x (pooler and classifier weights) x pairs; share of peak against "
        f"{_cell(peak, '{:.0f} TFLOP/s') if peak else 'no known peak for this device (omitted)'} dense fp16 "
        "(H100 SXM and H200: 989, H100 PCIe: 756, from the datasheets). Cross-encoder training: "
        "`training_speed.py`'s command line (group 8, query 32 / passage 224, lr 2e-5, AdamW fused) with a batch "
        f"of {s['ce_batch_groups']} groups, through `rerankforge_train_worker.train_rerankforge` (rerankforge-train's "
        f"parser, data loading and Trainer), {s['warmup_steps']} untimed + up to {s['ce_steps']} timed steps (step "
        "ends as the Trainer's callbacks see them; the loss logged every step synchronizes the GPU once a step, so "
        "the timed span is exact to within one step). LLM LoRA: "
        f"{llm.get('shape', '-')}, vocabulary {llm.get('vocab_size', '-')}, rerankforge's LLM family defaults "
        "(LoRA r 32, alpha 64, dropout 0.1 on the attention and MLP projections; query 32 / passage 192 tokens "
        f"plus the BGE prompt, group 8; grouped cross-entropy), {s['llm_batch_groups']} groups a step, "
        f"{'bf16 weights and autocast' if s['bf16'] else 'fp32'}, AdamW; each variant a fresh model (same seed), "
        f"{s['warmup_steps']} untimed + up to {s['steps']} timed steps (forward, loss, backward, optimizer), the "
        "same batches for both ways, which differ only in how the score is read: rerankforge's model forward asks "
        "the LM head for the last position only (`logits_to_keep=1`), FlagEmbedding 1.4.2's "
        "`CrossDecoderModel.encode` takes the whole LM output (`output_hidden_states=True`) and then "
        f"`logits[:, -1, yes]`. Flash attention 2: {llm.get('flash_attention_2', '-')}. Peak memory: "
        f"{results['peak_memory_kind']}, reset before each part. Each part was appended the moment it ended; it "
        "stops at its deadline (1.5 x its expected seconds, within the budget), after its first timed round or "
        f"step. Wall time of the run: {results['elapsed_s']:.0f} s of a {results['budget_s']:.0f} s budget."
        + (f" Stopped at their deadline: {', '.join(cut)}." if cut else "")
        + (f" Skipped or failed parts: {'; '.join(results['incomplete'])}." if results["incomplete"] else "")
    )


# --- the run ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny configs on the CPU, fp32: checks the code paths"
    )
    parser.add_argument(
        "--out",
        help="JSON of the raw numbers, rewritten after each part; the parts' JSON lines go beside it "
        "(<out>.jsonl) (default outputs/bench-gpu.json; smoke: a temp file)",
    )
    parser.add_argument(
        "--results", help="markdown to append to (default benchmarks/RESULTS.md; smoke: a temp file)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="wall-clock cap from the process's start (default 300: 5 minutes): a part that would not fit is "
        "skipped, a running one stops at its deadline",
    )
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["*"],
        metavar="PATTERN",
        help="run only the parts whose name matches one of these shell patterns, e.g. 'scoring-compiled/*' "
        "(set-up always runs; the names are in the JSON lines and the progress lines)",
    )
    parser.add_argument("--pairs", type=int, help="scoring pairs (default 4000; smoke 64)")
    parser.add_argument("--rounds", type=int, help="alternating scoring rounds (default 3; smoke 1)")
    parser.add_argument("--batch-size", type=int, help="scoring batch size (default 128; smoke 16)")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    settings = SMOKE if args.smoke else FULL
    overrides = {"pairs": args.pairs, "rounds": args.rounds, "batch_size": args.batch_size}
    return dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def quiet_progress_bars() -> None:
    """transformers' per-load and per-save bars would bury the progress lines."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def output_paths(args: argparse.Namespace, scratch: Path) -> tuple[Path, Path]:
    """Where the JSON and the markdown go: as asked, else the repository's (a smoke run: the scratch folder)."""
    if args.smoke:
        return Path(args.out or scratch / "bench-gpu-smoke.json"), Path(
            args.results or scratch / "RESULTS-smoke.md"
        )
    return Path(args.out or REPO / "outputs" / "bench-gpu.json"), Path(
        args.results or REPO / "benchmarks" / "RESULTS.md"
    )


def link_checkout(site: Path) -> Path:
    """rerankforge's three packages under the `rerankforge` name in ``site`` (setup.cfg's package_dir, as links)
    with a dist-info of its version: what `make bench-gpu` builds in its site folder."""
    found = re.search(r"^version\s*=\s*(\S+)", (REPO / "setup.cfg").read_text(encoding="utf-8"), re.M)
    release = found.group(1) if found else "0+checkout"
    package = site / "rerankforge"
    package.mkdir(parents=True, exist_ok=True)
    for name in ("trainer", "data_tools", "inference"):
        link = package / name
        if not link.exists():
            link.symlink_to(REPO / name, target_is_directory=True)
    info = site / f"rerankforge-{release}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: rerankforge\nVersion: {release}\n")
    return site


def import_rerankforge_from_checkout(scratch: Path) -> None:
    """The GPU machine sees a bare copy of the repository: where rerankforge is not installed, import it from
    the checkout (and let any child process do so too)."""
    if importlib.util.find_spec("rerankforge") is not None:
        return
    site = str(link_checkout(scratch / "site"))
    sys.path.insert(0, site)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))
    importlib.invalidate_caches()


def initial_results(settings: Settings, budget: Budget, work: Workspace, command: str) -> dict[str, Any]:
    """The full results before any part ran: every part's place holds "not run" until it ends."""
    from gpu_models import DECODERS

    not_run = {"not_run": "the run ended before this part"}
    return {
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "expected_s"},
        "expected_s": settings.expected_s,
        "command": command,
        "machine": describe_machine(),
        "versions": package_versions(),
        "peak_memory_kind": peak_memory_kind(work.device),
        "budget_s": budget.seconds,
        "setup": dict(not_run),
        "scoring": {name: dict(not_run) for name in work.encoders},
        "scoring_compiled": {name: dict(not_run) for name in settings.compiled_shapes},
        "scoring_repeated": {name: dict(not_run) for name in settings.repeated_shapes},
        "cross_encoder_training": dict(not_run),
        "llm_lora": {
            "shape": DECODERS[settings.mode].describe(),
            "flash_attention_2": "timed"
            if flash_attention_available(work.device)
            else "not installed (flash-attn) or no CUDA: not timed",
            "variants": {},
        },
        "elapsed_s": budget.elapsed(),
        "complete": False,
    }


def run_all(
    settings: Settings, args: argparse.Namespace, root: Path, budget: Budget, recorder: Recorder, command: str
) -> dict[str, Any]:
    """Set-up, then every chosen part in order, each recorded as it ends; the notes close the section."""
    from gpu_models import DECODERS

    work = Workspace(root, settings)
    device = work.device
    progress(budget, f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
                     f"{settings.mode} settings; budget {budget.seconds:.0f} s")  # fmt: skip
    results = initial_results(settings, budget, work, command)
    parts = plan(work)
    left_out = {part.name: why for part in parts if (why := chosen(part, args.sections, args.parts))}
    running = [part for part in parts if part.name not in left_out]
    title = "GPU speed: scoring, cross-encoder training, LLM LoRA" + (
        " (smoke run)" if settings.mode == "smoke" else ""
    )
    intro = (
        f"Each part below was appended the moment it ended (JSON lines: `{recorder.lines.name}`); the notes close "
        f"the section when the run ends. Parts: {', '.join(p.name for p in running)}. {TRUNCATION_RULES} "
        "(each scoring part counts the pairs each tool cuts differently)."
    )
    recorder.start({k: results[k] for k in ("settings", "expected_s", "command", "machine", "versions",
                                            "budget_s")} | {"parts": [p.name for p in running]},
                   title, command, intro)  # fmt: skip
    setup = run_part(
        setup_part(work, [n for p in running for n in p.needs]), settings, budget, recorder, results
    )
    for part in parts:
        if part.name in left_out:
            store(results, part.path, {"not_run": left_out[part.name]})
        elif _reason(setup):
            store(results, part.path, {"not_run": f"set-up {status(setup)}"})
        else:
            run_part(part, settings, budget, recorder, results)
    if "decoder" in work.tokenizers:
        results["llm_lora"]["vocab_size"] = DECODERS[settings.mode].vocab_size or len(
            work.tokenizers["decoder"]
        )
    results["outcomes"] = recorder.outcomes
    results["incomplete"] = [
        f"{name} ({reason})" for name, r in recorder.outcomes.items() if "not_run" not in r and (reason := _reason(r))
    ]  # fmt: skip
    results["elapsed_s"] = budget.elapsed()
    results["complete"] = True
    end = {"elapsed_s": results["elapsed_s"], "incomplete": results["incomplete"]}
    recorder.finish(end, notes(results), json.dumps(results, indent=2, default=str))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the parts asked for; exit 0 when all of them produced numbers, 1 when some were skipped or failed,
    128 + the signal's number when a signal stopped the run."""
    args = parse_args(argv)
    settings = settings_from(args)
    if settings.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_bench: no CUDA device here; run it on a GPU machine, or --smoke for the CPU check",
            file=sys.stderr,
        )
        return 2
    budget = Budget(args.budget_s, start=process_start())
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as scratch:
        root = Path(scratch)
        import_rerankforge_from_checkout(root)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ["HF_DATASETS_CACHE"] = str(root / "datasets-cache")  # before `datasets` is first imported
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        quiet_progress_bars()
        out, markdown = output_paths(args, root)
        recorder = Recorder(out, markdown, f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")

        def end_now(signum: int) -> None:  # the scratch folder holds GBs of models on the GPU run
            shutil.rmtree(root, ignore_errors=True)
            os._exit(128 + signum)

        recorder.on_stop = end_now
        install_stop_handler(recorder, budget)
        command = "python benchmarks/gpu_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
        results = run_all(settings, args, root, budget, recorder, command.strip())
        print(f"\nraw numbers: {out} (parts: {recorder.lines})\nmarkdown appended to: {markdown}", flush=True)
        if args.smoke and not (args.out and args.results):
            print("smoke outputs were in a temporary folder (pass --out and --results to keep them)")
    return 1 if results["incomplete"] else 0


if __name__ == "__main__":
    sys.exit(main())

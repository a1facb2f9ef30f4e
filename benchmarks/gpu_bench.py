"""GPU speed in one run (`make bench-gpu`, about 6 minutes on an H100 or H200): scoring, cross-encoder training and
LLM LoRA steps, on random-weight models in real shapes.

1. Scoring pairs/s of rerankforge's `Reranker.compute_score` against sentence-transformers' `CrossEncoder.predict`
   and a length-sorted plain transformers loop (FlagReranker's method), for MiniLM-L6 (BERT 6x384),
   bge-reranker-base (XLM-R 12x768) and bge-reranker-large (XLM-R 24x1024) shapes: 10,000 SQuAD question /
   paragraph pairs, fp16, batch 128, max length 512, medians of 3 alternating rounds after a warm-up; achieved
   TFLOP/s over real tokens only (`gpu_measure.encoder_forward_flops` gives the formula) and the share of the
   GPU's dense fp16 peak; the largest score difference of each tool to the plain loop.
2. Training: the bge-reranker-base shape through rerankforge's real trainer (bf16 autocast), steps/s and peak
   memory; LoRA steps of a Qwen2-1.5B-shaped decoder, with and without gradient checkpointing, sdpa and (where
   flash-attn is installed) flash attention 2, each scored rerankforge's way (last position's "Yes" logit only)
   and FlagEmbedding's (the LM head over all 151,936 vocabulary entries at every position).
3. Results: a section appended to benchmarks/RESULTS.md (or ``--results``) with the device, versions and command,
   and the raw numbers as JSON (``--out``).

``--smoke`` runs the same code on the CPU with tiny configs (64 pairs, 1 round, 2 training steps, fp32) in under a
minute; tests/test_benchmarks.py runs it, so this script cannot rot. ``--budget-s`` caps the whole run: a section
that would not fit in what is left is skipped and recorded as skipped, never cut short.

    python benchmarks/gpu_bench.py --out $OUT/bench-gpu.json --results $OUT/RESULTS-gpu.md
    python benchmarks/gpu_bench.py --smoke --out /tmp/smoke.json --results /tmp/smoke.md
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from gpu_measure import Budget, peak_memory_kind  # noqa: E402
from gpu_scoring import RERANKFORGE  # noqa: E402
from machine import append_results, describe_machine  # noqa: E402

SECTIONS = ("scoring", "cross_encoder_training", "llm_lora")
VERSIONED = ("torch", "transformers", "sentence-transformers", "peft", "accelerate", "datasets", "tokenizers",
             "flash-attn")  # fmt: skip


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
    # seconds each part is expected to take on an H100/H200: a part starts only if that still fits the budget
    expected_s: dict[str, float] = field(default_factory=dict)


FULL = Settings(
    mode="full", device="cuda", scoring_dtype="float16", bf16=True, pairs=10_000, per_query=5,
    batch_size=128, max_length=512, rounds=3, warmup_pairs=1024, ce_batch_groups=16, ce_steps=30,
    llm_batch_groups=4, warmup_steps=3, steps=10, tokenizer_texts=None, xlmr_vocab=30_000, decoder_vocab=30_000,
    expected_s={"minilm-l6": 30, "bge-reranker-base": 45, "bge-reranker-large": 75,
                "cross_encoder_training": 45, "llm_lora": 20},
)  # fmt: skip
SMOKE = Settings(
    mode="smoke", device="cpu", scoring_dtype="float32", bf16=False, pairs=64, per_query=4,
    batch_size=16, max_length=512, rounds=1, warmup_pairs=8, ce_batch_groups=2, ce_steps=1,
    llm_batch_groups=1, warmup_steps=1, steps=1, tokenizer_texts=400, xlmr_vocab=1000, decoder_vocab=1000,
)  # fmt: skip


def progress(budget: Budget, message: str) -> None:
    print(f"[{budget.elapsed():6.0f} s] {message}", flush=True)


def guarded(
    budget: Budget, name: str, expected_s: float, run: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """A part of the run: skipped when its expected time no longer fits, its error recorded rather than raised,
    so one failure does not lose the other numbers of a device lease."""
    if not budget.allows(expected_s):
        progress(budget, f"{name}: skipped (time budget)")
        return budget.skipped(expected_s)
    progress(budget, f"{name}: start")
    try:
        result = run()
    except Exception as error:  # noqa: BLE001 - recorded in the results and printed in full
        traceback.print_exc()
        progress(budget, f"{name}: FAILED ({type(error).__name__}: {error})")
        return {"error": f"{type(error).__name__}: {error}"}
    progress(budget, f"{name}: done")
    return result


class Workspace:
    """The run's temporary folder, SQuAD groups and trained tokenizers, and each model folder saved once (the
    bge-reranker-base folder serves scoring and training alike)."""

    def __init__(self, root: Path, settings: Settings):
        from gpu_models import ENCODERS, corpus_texts, squad_groups, squad_path

        self.root, self.settings = root, settings
        self.device = torch.device(settings.device)
        self.groups = squad_groups(squad_path(), negatives=15)
        self.texts = corpus_texts(self.groups)[: settings.tokenizer_texts]
        self.encoders = {shape.name: shape for shape in ENCODERS[settings.mode]}
        self._tokenizers: dict[str, Any] = {}
        self._folders: dict[str, Path] = {}

    def encoder_tokenizer(self, model_type: str) -> Any:
        from gpu_models import byte_level_tokenizer, minilm_tokenizer, xlmr_style_tokenizer

        if model_type not in self._tokenizers:
            make = {
                "bert": minilm_tokenizer,
                "xlm-roberta": lambda: xlmr_style_tokenizer(self.texts, self.settings.xlmr_vocab),
                "decoder": lambda: byte_level_tokenizer(self.texts, self.settings.decoder_vocab),
            }[model_type]
            self._tokenizers[model_type] = make()
        return self._tokenizers[model_type]

    def encoder_folder(self, name: str) -> Path:
        from gpu_models import save_encoder

        if name not in self._folders:
            shape = self.encoders[name]
            dtype = getattr(torch, self.settings.scoring_dtype)
            folder = self.root / name
            save_encoder(shape, self.encoder_tokenizer(shape.model_type), folder, dtype, self.device)
            self._folders[name] = folder
        return self._folders[name]


def run_scoring(work: Workspace, budget: Budget) -> dict[str, Any]:
    """Every encoder shape through every scoring tool (one guarded part per shape)."""
    from gpu_models import scoring_pairs
    from gpu_scoring import scoring_run

    s = work.settings
    pairs = scoring_pairs(work.groups, s.pairs, s.per_query)
    dtype = getattr(torch, s.scoring_dtype)

    def one(name: str) -> dict[str, Any]:
        result = scoring_run(work.encoder_folder(name), pairs, work.device, dtype, s.batch_size, s.max_length,
                             s.warmup_pairs, s.rounds)  # fmt: skip
        return {"shape": work.encoders[name].describe(), **result}

    return {
        name: guarded(budget, f"scoring {name}", s.expected_s.get(name, 0), lambda n=name: one(n))
        for name in work.encoders
    }


def run_cross_encoder_training(work: Workspace) -> dict[str, Any]:
    """The bge-reranker-base shape through rerankforge's trainer, on SQuAD groups of 8."""
    import training_speed
    from gpu_training import cross_encoder_training, write_groups

    s = work.settings
    lines = max(256, s.ce_batch_groups * (s.warmup_steps + s.ce_steps))
    data = write_groups(work.groups, work.root / "train.jsonl", lines, training_speed.GROUP_SIZE - 1)
    name = "bge-reranker-base"
    result = cross_encoder_training(work.encoder_folder(name), data, work.root / "ce-train", work.device, s.bf16,
                                    s.ce_batch_groups, s.warmup_steps, s.ce_steps)  # fmt: skip
    return {"shape": work.encoders[name].describe(), **result}


def flash_attention_available(device: torch.device) -> bool:
    return device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None


def run_llm_lora(work: Workspace, budget: Budget) -> dict[str, Any]:
    """Each LoRA variant as its own guarded part: a fresh model, its own peak memory."""
    from gpu_models import DECODERS
    from gpu_training import lora_variant_run, lora_variants

    s = work.settings
    shape = DECODERS[s.mode]
    tokenizer = work.encoder_tokenizer("decoder")
    attentions = ["sdpa"] + (["flash_attention_2"] if flash_attention_available(work.device) else [])
    variants = {}
    for variant in lora_variants(attentions):
        run = functools.partial(lora_variant_run, variant, shape, tokenizer, work.groups, work.root / "llm",
                                work.device, s.bf16, s.llm_batch_groups, s.warmup_steps, s.steps)  # fmt: skip
        variants[variant.label()] = guarded(
            budget, f"LLM LoRA {variant.label()}", s.expected_s.get("llm_lora", 0), run
        )
    return {
        "shape": shape.describe(),
        "vocab_size": shape.vocab_size or len(tokenizer),
        "flash_attention_2": "timed"
        if len(attentions) > 1
        else "not installed (flash-attn) or no CUDA: not timed",
        "variants": variants,
    }


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


def scoring_table(scoring: dict[str, dict[str, Any]], rounds: int) -> str:
    """One row per shape and tool: pairs/s, rerankforge's ratio, TFLOP/s, share of peak, score difference."""
    lines = [
        f"| shape | tool | pairs/s (median of {rounds}, min-max) | rerankforge / tool | TFLOP/s (real tokens) | "
        "share of dense fp16 peak | max abs score diff to the plain loop |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in scoring.items():
        if reason := _reason(result):
            lines.append(f"| {name} | ({reason}) | - | - | - | - | - |")
            continue
        ours = result["tools"][RERANKFORGE]["pairs_per_s"]
        for tool, row in result["tools"].items():
            lines.append(
                f"| {name} ({result['shape']}) | {tool} | {row['pairs_per_s']:.0f} ({row['pairs_per_s_min']:.0f}-"
                f"{row['pairs_per_s_max']:.0f}) | {ours / row['pairs_per_s']:.2f}x | {row['tflops']:.3g} | "
                f"{_cell(row['share_of_peak'], '{:.1%}')} | {row['max_abs_diff_to_reference']:.1e} |"
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


def llm_table(result: dict[str, Any]) -> str:
    from gpu_training import WAY_LABELS

    lines = [
        "| scoring | attention | gradient checkpointing | step s (median) | steps/s | peak memory MB | "
        "rows / real tokens per step |",
        "|---|---|---|---|---|---|---|",
    ]
    if reason := _reason(result):
        return "\n".join([*lines, f"| LLM LoRA | ({reason}) | - | - | - | - | - |"])
    for label, row in result["variants"].items():
        if reason := _reason(row):
            lines.append(f"| {label} | ({reason}) | - | - | - | - | - |")
            continue
        lines.append(
            f"| {WAY_LABELS[row['way']]} | {row['attention']} | {'on' if row['checkpointing'] else 'off'} | "
            f"{row['step_s_median']:.3f} | {row['steps_per_s']:.2f} | {row['peak_memory_mb']:.0f} | "
            f"{row['rows_per_step']} / {row['real_tokens_per_step']:.0f} |"
        )
    return "\n".join(lines)


def notes(results: dict[str, Any]) -> str:
    """What the tables were measured on and how (appended under them)."""
    s = results["settings"]
    scoring = [r for r in results["scoring"].values() if "tools" in r]
    tokens = ", ".join(
        f"{name} {r['mean_tokens']:.0f}" for name, r in results["scoring"].items() if "tools" in r
    )
    peak = next((r["peak_tflops"] for r in scoring if r["peak_tflops"]), None)
    llm = results["llm_lora"]
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    return (
        f"{'SMOKE RUN (tiny configs on the CPU: checks the code paths, the numbers mean nothing). ' if s['mode'] == 'smoke' else ''}"
        f"Device: {results['machine']['gpu']}; versions: {versions}. Random-weight models built from configs; "
        "MiniLM uses its real WordPiece tokenizer, the XLM-R shapes a Unigram tokenizer trained here on SQuAD text "
        f"({s['xlmr_vocab']} pieces asked for; XLM-R's own vocabulary is not available) with the model's vocab_size "
        "kept at 250,002 so the embedding has the real shape; the decoder a byte-level BPE trained here, with "
        f"Qwen2's 151,936-row embedding and LM head. Scoring: {s['pairs']} SQuAD v1.1 dev pairs (each question "
        f"with its own paragraph and {s['per_query'] - 1} other paragraphs of its article; mean real tokens per "
        f"pair: {tokens or '-'}), {s['scoring_dtype']}, batch {s['batch_size']}, max length {s['max_length']}, "
        f"every tool on the same folder and pairs, warmed up on {s['warmup_pairs']} pairs, then {s['rounds']} "
        "alternating rounds; each pass includes its tokenization. rerankforge: `Reranker.from_pretrained(folder, "
        "dtype=...)`, `compute_score(pairs, batch_size=...)`; sentence-transformers: `CrossEncoder(folder, "
        "max_length=512)` cast to the dtype, `predict(..., activation_fn=Identity)`; plain loop: FlagReranker's "
        "method (tokenize all, sort by length, `tokenizer.pad` per batch, `.logits.view(-1).float()`). "
        "TFLOP/s = forward FLOPs over real tokens only (padding is not counted) / median seconds, FLOPs = "
        "2 x (encoder-layer weights) x real tokens + 4 x layers x hidden x sum(length^2) (attention scores and "
        "weighted sums) + 2 x (pooler and classifier weights) x pairs; share of peak against "
        f"{_cell(peak, '{:.0f} TFLOP/s') if peak else 'no known peak for this device (omitted)'} dense fp16 "
        "(H100 SXM and H200: 989, H100 PCIe: 756, from the datasheets). Cross-encoder training: "
        "`training_speed.py`'s command line (group 8, query 32 / passage 224, lr 2e-5, AdamW fused) with a batch "
        f"of {s['ce_batch_groups']} groups, through `rerankforge_train_worker.train_rerankforge` (rerankforge-train's "
        f"parser, data loading and Trainer), {s['warmup_steps']} untimed + {s['ce_steps']} timed steps (step ends as "
        "the Trainer's callbacks see them; the loss logged every step synchronizes the GPU once a step, so the "
        "timed span is exact to within one step). LLM LoRA: "
        f"{llm.get('shape', '-')}, vocabulary {llm.get('vocab_size', '-')}, rerankforge's LLM family defaults "
        "(LoRA r 32, alpha 64, dropout 0.1 on the attention and MLP projections; query 32 / passage 192 tokens "
        f"plus the BGE prompt, group 8; grouped cross-entropy), {s['llm_batch_groups']} groups a step, "
        f"{'bf16 weights and autocast' if s['bf16'] else 'fp32'}, AdamW; each variant a fresh model (same seed), "
        f"{s['warmup_steps']} untimed + {s['steps']} timed steps (forward, loss, backward, optimizer), the same "
        "batches for both ways, which differ only in how the score is read: rerankforge's model forward asks the "
        "LM head for the last position only (`logits_to_keep=1`), FlagEmbedding 1.4.2's `CrossDecoderModel.encode` "
        "takes the whole LM output (`output_hidden_states=True`) and then `logits[:, -1, yes]`. Flash attention 2: "
        f"{llm.get('flash_attention_2', '-')}. Peak memory: {results['peak_memory_kind']}, reset before each "
        f"part. Wall time of the run: {results['elapsed_s']:.0f} s of a {results['budget_s']:.0f} s budget."
        + (f" Skipped or failed parts: {'; '.join(results['incomplete'])}." if results["incomplete"] else "")
    )


def incomplete_parts(results: dict[str, Any]) -> list[str]:
    parts = [(f"scoring {k}", v) for k, v in results["scoring"].items()]
    parts.append(("cross-encoder training", results["cross_encoder_training"]))
    parts += [(f"LLM LoRA {k}", v) for k, v in results["llm_lora"].get("variants", {}).items()]
    parts.append(("LLM LoRA", results["llm_lora"]))
    return [
        f"{name} ({reason})"
        for name, result in parts
        if "not_run" not in result and (reason := _reason(result))
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny configs on the CPU, fp32: checks the code paths"
    )
    parser.add_argument(
        "--out", help="JSON of the raw numbers (default outputs/bench-gpu.json; smoke: a temp file)"
    )
    parser.add_argument(
        "--results", help="markdown to append to (default benchmarks/RESULTS.md; smoke: a temp file)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="wall-clock cap: parts that would not fit are skipped"
    )
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--pairs", type=int, help="scoring pairs (default 10000; smoke 64)")
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


def run_all(settings: Settings, sections: Sequence[str], root: Path, budget: Budget) -> dict[str, Any]:
    device = torch.device(settings.device)
    progress(budget, f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
                     f"{settings.mode} settings; budget {budget.seconds:.0f} s")  # fmt: skip
    work = Workspace(root, settings)
    not_run = {"not_run": "not among --sections"}
    results: dict[str, Any] = {
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "expected_s"},
        "machine": describe_machine(),
        "versions": package_versions(),
        "peak_memory_kind": peak_memory_kind(device),
        "budget_s": budget.seconds,
    }
    results["scoring"] = (
        run_scoring(work, budget) if "scoring" in sections else {n: not_run for n in work.encoders}
    )
    ce_expected = settings.expected_s.get("cross_encoder_training", 0)
    results["cross_encoder_training"] = (
        guarded(budget, "cross-encoder training", ce_expected, lambda: run_cross_encoder_training(work))
        if "cross_encoder_training" in sections else not_run
    )  # fmt: skip
    results["llm_lora"] = (
        guarded(budget, "LLM LoRA", 0, lambda: run_llm_lora(work, budget))
        if "llm_lora" in sections
        else not_run
    )
    results["elapsed_s"] = budget.elapsed()
    results["incomplete"] = incomplete_parts(results)
    return results


def write_outputs(results: dict[str, Any], out: Path, markdown: Path, command: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    tables = (
        "Scoring:\n\n" + scoring_table(results["scoring"], results["settings"]["rounds"])
        + "\n\nCross-encoder training (rerankforge's trainer):\n\n" + training_table(results["cross_encoder_training"])
        + "\n\nLLM LoRA steps:\n\n" + llm_table(results["llm_lora"])
    )  # fmt: skip
    markdown.parent.mkdir(parents=True, exist_ok=True)
    title = "GPU speed: scoring, cross-encoder training, LLM LoRA" + (
        " (smoke run)" if results["settings"]["mode"] == "smoke" else ""
    )
    append_results(markdown, title, command, tables, notes(results))
    print(f"\n{tables}\n\nraw numbers: {out}\nmarkdown appended to: {markdown}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the parts asked for; exit 0 when all of them produced numbers, 1 when some were skipped or failed."""
    args = parse_args(argv)
    settings = settings_from(args)
    if settings.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_bench: no CUDA device here; run it on a GPU machine, or --smoke for the CPU check",
            file=sys.stderr,
        )
        return 2
    budget = Budget(args.budget_s)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as scratch:
        root = Path(scratch)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ["HF_DATASETS_CACHE"] = str(root / "datasets-cache")  # before `datasets` is first imported
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        quiet_progress_bars()
        results = run_all(settings, args.sections, root, budget)
        out, markdown = output_paths(args, root)
        command = "python benchmarks/gpu_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_outputs(results, out, markdown, command.strip())
        if args.smoke and not (args.out and args.results):
            print("smoke outputs were in a temporary folder (pass --out and --results to keep them)")
    return 1 if results["incomplete"] else 0


if __name__ == "__main__":
    sys.exit(main())

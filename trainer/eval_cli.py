"""`rerankforge-eval --model PATH --data DATA --split test --top-k 100 [--calibrate platt]`: rerank BM25's top k
and compare; measure how well the scores' probabilities match the judgments, or fit a calibration that does."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rerankforge.data_tools.cli import program_name
from rerankforge.data_tools.ir_data import load_ir_split
from rerankforge.data_tools.ir_metrics import paired_comparison
from rerankforge.data_tools.retrieval import Run, read_trec_run, write_trec_run
from rerankforge.inference.auto import load_reranker
from rerankforge.inference.backend_choice import scoring_dtype
from rerankforge.inference.long_passages import DEFAULT_TOP_K, MODES, LongPassages, save_long_passages
from rerankforge.inference.modeling.calibration import METHODS, Calibration, ScoreMap
from rerankforge.inference.modeling.files import atomic_write_text
from rerankforge.inference.modeling.fusion import FUSION_METHODS, Fusion
from rerankforge.inference.modeling.precision import DTYPES
from rerankforge.inference.sharded_scoring import (
    Launch,
    compute_score_sharded,
    current_launch,
    process_device,
)
from rerankforge.trainer.calibration import (
    calibrate_held_out,
    calibration_report,
    measured_on,
    save_calibration,
    thresholds_table,
    write_report,
)
from rerankforge.trainer.evaluation import RerankEvalSet
from rerankforge.trainer.fusion_choice import below_first_stage, choose_on_split, save_fusion
from rerankforge.trainer.report import metric_table


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program_name("rerankforge-eval"), description=__doc__)
    parser.add_argument("--model", required=True, help="any checkpoint rerankforge.inference loads")
    parser.add_argument("--data", required=True, help="BEIR folder, SQuAD JSON file, or BEIR Hub name")
    parser.add_argument(
        "--split", default="test", help="BEIR qrels split; SQuAD: train, test (held out) or all"
    )
    parser.add_argument("--top-k", type=int, default=100, help="first-stage candidates reranked per query")
    parser.add_argument("--run", help="a TREC run file to rerank instead of BM25's")
    parser.add_argument("--max-queries", type=int, help="a seeded sample of this many judged queries")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--max-batch-tokens", type=int, help="also cap each batch at this many padded tokens (e.g. 16384)"
    )
    parser.add_argument("--eval-fraction", type=float, default=0.2, help="SQuAD: share of articles held out")
    parser.add_argument("--split-seed", type=int, default=0, help="SQuAD: seed of the article split")
    parser.add_argument(
        "--device",
        help="cpu, cuda, cuda:1 ... (default: cuda when available); under `accelerate launch` with N processes "
        "each process reranks its shard of the pairs on its own device (cuda:LOCAL_RANK, or cpu with --cpu) "
        "and --device is ignored with a warning; the main process alone writes the output",
    )
    parser.add_argument(
        "--dtype",
        choices=[*sorted(DTYPES), "auto"],
        default="float32",
        help="weights' precision; bfloat16 is ~2.5x faster on CPUs with AVX-512 bf16 or AMX and ~6x slower on "
        "CPUs without (AVX2); auto = bfloat16 where the device computes in it, else float32 (scores stay float32)",
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx", "openvino", "onnx-int8", "openvino-bf16"],
        default=None,
        help="cross-encoders on the CPU (default auto: the fastest exact one here, measured once); onnx, openvino = "
        "the same fp32 scores; onnx-int8 (int8 weights), openvino-bf16 (bf16 math) = faster, scores differ",
    )
    parser.add_argument(
        "--output", help="folder for metrics.json and the run files (default: MODEL/eval/...)"
    )
    parser.add_argument(
        "--calibrate",
        choices=METHODS,
        help="fit a calibration (platt: temperature and bias; isotonic) of the score on a share of these judged "
        "queries, measure it on the others, and store it in MODEL's rerankforge.json: compute_score(normalize="
        "True) and predict then return calibrated probabilities",
    )
    parser.add_argument(
        "--calibration-fraction", type=float, default=0.5,
        help="--calibrate and --fusion: share of the judged queries the calibration is fitted on and the fusion "
        "weight chosen on (seeded by --split-seed); the rest measure them",
    )  # fmt: skip
    parser.add_argument(
        "--fusion",
        choices=FUSION_METHODS,
        help="choose the weight that fuses the reranker's scores with the first stage's (interpolation of min-max "
        "normalized scores, or rrf) on a share of the judged queries, report the fused ranking on the others, "
        "and store it in MODEL's rerankforge.json (rank(..., first_stage_scores=...) applies it)",
    )
    add_long_passage_flags(parser)
    return parser


def add_long_passage_flags(parser: argparse.ArgumentParser) -> None:
    """How passages longer than the model reads are scored (`rerankforge.inference.long_passages`)."""
    group = parser.add_argument_group("long passages")
    group.add_argument(
        "--long-passages",
        choices=MODES,
        help="truncate (cut at the passage budget), firstp (the first window), maxp (the best window) or meanp "
        "(the mean of the best --windows-top-k windows); default: the model's saved mode, else truncate",
    )
    group.add_argument("--window", type=int, help="passage tokens per window (default: what the model keeps "
                       "beside each query)")  # fmt: skip
    group.add_argument("--stride", type=int, help="tokens between window starts (default: half the window)")
    group.add_argument("--windows-top-k", type=int, default=DEFAULT_TOP_K, help="windows meanp averages")
    group.add_argument(
        "--save-long-passages",
        action="store_true",
        help="store these long-passage settings in MODEL's rerankforge.json: the model then scores this way "
        "by default (compute_score, predict, rank)",
    )


def long_passage_settings(args: argparse.Namespace, reranker: object) -> LongPassages:
    """The flags over the model's saved settings."""
    settings = reranker.passage_settings(args.long_passages, args.window, args.stride)
    return replace(settings, top_k=args.windows_top_k) if args.long_passages else settings


def evaluate_model(args: argparse.Namespace, launch: Launch | None = None) -> dict[str, object]:
    """Every process of a launch builds the same first stage (BM25 is deterministic and cheap next to the
    reranker) and scores its shard of the pairs; every process gets all scores back."""

    launch = launch or Launch()
    dataset = load_ir_split(args.data, args.split, args.eval_fraction, args.split_seed)
    first_stage = read_trec_run(args.run, list(dataset.queries)) if args.run else None
    eval_set = RerankEvalSet.from_dataset(dataset, args.top_k, args.max_queries, args.split_seed, first_stage)
    # ONNX backends score on the CPU whatever the launch: only the torch backend takes the process's device
    device = process_device(launch, args.device) if args.backend in (None, "auto", "torch") else args.device
    dtype = scoring_dtype(args.dtype, device, args.backend)
    reranker = load_reranker(args.model, args.backend, device=device, dtype=dtype)
    reranker.max_batch_tokens = args.max_batch_tokens
    reranker.long_passages = long_passage_settings(args, reranker)
    pairs = eval_set.pairs()
    texts = eval_set.texts(pairs)
    start = time.perf_counter()
    scores, windows = compute_score_sharded(reranker, texts, launch, args.batch_size, return_windows=True)
    seconds = time.perf_counter() - start
    run = eval_set.run_from_scores(pairs, scores)
    reranked = {
        **eval_set.metrics(run),
        "queries_per_second": len(eval_set.candidates) / seconds,
        "pairs_per_second": len(pairs) / seconds,
        "windows_per_pair": sum(windows) / max(1, len(pairs)),
    }
    labels = [eval_set.qrels.get(q, {}).get(d, 0) > 0 for q, d in pairs]
    # a layerwise model's scores are its last layer's
    layer = (getattr(reranker, "layers", None) or [None])[-1]
    stored = Calibration.from_dict(getattr(reranker.spec, "calibration", None))
    return {
        "model": args.model,
        "data": eval_set.name,
        "split": args.split,
        "queries": len(eval_set.candidates),
        "top_k": args.top_k,
        "dtype": str(dtype).removeprefix("torch."),  # what "auto" chose
        "backend": getattr(reranker, "backend", args.backend or "torch"),  # what "auto" chose
        "pairs": len(pairs),
        "long_passages": reranker.long_passages.to_dict(),
        "processes": launch.num_processes,
        "first_stage": "run file " + args.run if args.run else "BM25",
        "first_stage_metrics": eval_set.first_stage_metrics(),
        "reranker_metrics": reranked,
        "queries_vs_first_stage": paired_comparison(eval_set.qrels, eval_set.candidates, run),
        "calibration": measured_on(scores, labels, stored, layer)
        if stored
        else sigmoid_calibration(scores, labels),
        "_runs": (eval_set.candidates, run),
        "_qrels": eval_set.qrels,
        "_pairs": (pairs, scores, labels, layer),
    }


def sigmoid_calibration(scores: list[float], labels: list[bool]) -> dict[str, float] | None:
    """ECE and Brier of the plain sigmoid, for a model without a calibration (None: nothing to measure)."""
    try:
        report = calibration_report(scores, labels, ScoreMap("platt"))  # scale 1, bias 0: the sigmoid itself
    except ValueError:
        return None
    return {k: v for k, v in report.items() if not k.endswith("_after")}


def choose_and_store_fusion(
    args: argparse.Namespace,
    result: dict[str, object],
    qrels: dict[str, dict[str, int]],
    first: Run,
    reranked: Run,
) -> Fusion:
    """``--fusion``: the weight chosen on a seeded share of the judged queries, the fused ranking measured on the
    others (its rows go into the result), the fusion stored in the model."""
    fusion, rows, tested = choose_on_split(qrels, first, reranked, args.fusion, args.calibration_fraction,
                                           args.split_seed, f"{result['data']} ({args.split}), top {args.top_k}",
                                           args.top_k)  # fmt: skip
    save_fusion(args.model, fusion)
    result["fusion"] = {**fusion.to_dict(), "test_queries": tested, "rows": rows}
    return fusion


def fit_and_store(args: argparse.Namespace, result: dict[str, object], output: Path) -> Calibration:
    """``--calibrate``: fit on a seeded share of the judged queries, measure on the rest, store in the model."""
    pairs, scores, labels, layer = result["_pairs"]
    calibration, held_scores, held_labels, held_queries = calibrate_held_out(
        [q for q, _ in pairs], scores, labels, args.calibrate, args.calibration_fraction, args.split_seed,
        f"{result['data']} ({args.split}), top {args.top_k}", layer,
    )  # fmt: skip
    save_calibration(args.model, calibration)
    title = f"{result['data']} ({args.split}), {held_queries} held-out queries"
    for folder in (
        output,
        Path(args.model) / "calibration",
    ):  # the model's copy travels into its export's card
        write_report(folder, calibration, held_scores, held_labels, title)
    return calibration


def default_output(args: argparse.Namespace) -> Path:
    """MODEL/eval/<data set>-<split>-top<k>: one folder per evaluation, so none overwrites another."""
    data_name = Path(str(args.data).rstrip("/")).name.removesuffix(".json").replace("/", "-")
    backend = "" if args.backend in (None, "auto", "torch") else f"-{args.backend}"
    return Path(args.model) / "eval" / f"{data_name}-{args.split}-top{args.top_k}{backend}"


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        launch = current_launch()
        result = evaluate_model(args, launch)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not launch.is_main_process:
        return 0
    first_run, reranked_run = result.pop("_runs")
    output = Path(args.output) if args.output else default_output(args)
    calibration = None
    if args.calibrate:
        try:
            calibration = fit_and_store(args, result, output)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        result["calibration"] = calibration.report
    result.pop("_pairs")
    if args.save_long_passages:
        save_long_passages(args.model, LongPassages.from_dict(result["long_passages"]))
    qrels = result.pop("_qrels")
    fusion = None
    if args.fusion:
        try:
            fusion = choose_and_store_fusion(args, result, qrels, first_run, reranked_run)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    write_trec_run(first_run, output / "first_stage.run", "bm25" if not args.run else "input")
    write_trec_run(reranked_run, output / "reranked.run", "rerankforge")
    atomic_write_text(output / "metrics.json", json.dumps(result, indent=2) + "\n")
    rows = [
        (str(result["first_stage"]), result["first_stage_metrics"]),
        ("reranker", result["reranker_metrics"]),
    ]
    print(f"\n{result['data']} ({args.split}): {result['queries']} queries, top {args.top_k} reranked\n")
    print(metric_table(rows, args.top_k))
    print_long_passages(result, stored=args.save_long_passages)
    versus = result["queries_vs_first_stage"]
    print(
        f"\nnDCG@10 per query, reranker vs first stage: {versus['better']} better, {versus['worse']} worse, "
        f"{versus['same']} the same"
    )
    warning = below_first_stage(qrels, first_run, reranked_run, args.top_k)
    if warning:
        print(f"\nWARNING: {warning}")
    if fusion is not None:
        print(f"\nfusion with the first stage: weight {fusion.weight:g} ({fusion.method}) chosen on "
              f"{fusion.chosen_on}; on the other {result['fusion']['test_queries']} queries:\n")  # fmt: skip
        print(metric_table(result["fusion"]["rows"], args.top_k))
    print_calibration(result.get("calibration"), calibration)
    written = "metrics.json, first_stage.run, reranked.run" + (
        ", calibration.json, reliability.png" if calibration else ""
    )
    print(f"\nwritten: {output}/{written}")
    return 0


def print_long_passages(result: dict, stored: bool) -> None:
    """How long passages were scored, and what windows cost: their count per pair and the pairs/s."""
    settings = LongPassages.from_dict(result["long_passages"])
    speed = result["reranker_metrics"]
    print(f"\nlong passages: {settings.describe()}; {speed['windows_per_pair']:.2f} windows per pair, "
          f"{speed['pairs_per_second']:.1f} pairs/s" + (" (stored in rerankforge.json)" if stored else ""))  # fmt: skip


def print_calibration(measured: dict | None, fitted: Calibration | None) -> None:
    """ECE and Brier (on held-out queries when just fitted), and the thresholds table of a new calibration."""
    if fitted is not None:
        held = fitted.report.get("held_out") or {}
        print(
            f"\ncalibration ({fitted.report['method']}) fitted on {fitted.fitted_on}; stored in rerankforge.json"
        )
        if held:
            print(f"on the {held['pairs']} held-out pairs: ECE {held['ece_before']:.4f} -> {held['ece_after']:.4f}, "
                  f"Brier {held['brier_before']:.4f} -> {held['brier_after']:.4f} (sigmoid -> calibrated)")  # fmt: skip
        print("\nthresholds on the fitting pairs (use with normalize=True scores or rank(min_score=...)):\n")
        print(thresholds_table(fitted))
    elif measured and "ece_after" in measured:
        print(f"\nstored calibration on these pairs: ECE {measured['ece_before']:.4f} -> {measured['ece_after']:.4f}, "
              f"Brier {measured['brier_before']:.4f} -> {measured['brier_after']:.4f} (sigmoid -> calibrated)")  # fmt: skip
    elif measured:
        print(f"\nsigmoid of the score on these pairs: ECE {measured['ece_before']:.4f}, Brier "
              f"{measured['brier_before']:.4f} (no calibration: --calibrate fits one)")  # fmt: skip


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":  # `accelerate launch -m rerankforge.trainer.eval_cli ...`
    run()

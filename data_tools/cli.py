"""`rerankforge-data`: `check` validates and summarises training JSONL, `mine` writes it with hard negatives
from a data set (filtered by a teacher against false negatives), `score` adds a teacher's scores for
distillation, `split` writes a BEIR folder with train and test qrels."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from transformers import AutoConfig, AutoTokenizer

from rerankforge.data_tools.ir_data import (
    load_ir_dataset,
    load_ir_split,
    sample_queries,
    split_by_group,
    write_beir,
)
from rerankforge.data_tools.mining import mine_from_dataset, write_jsonl
from rerankforge.data_tools.mining_arguments import add_mining_flags, mining_arguments_from
from rerankforge.data_tools.retrieval import read_trec_run
from rerankforge.data_tools.schema import DataValidationError, iter_lines, validate_files
from rerankforge.data_tools.sources import load_train_dataset, resolve_data_files
from rerankforge.data_tools.stats import count_summary, token_lengths
from rerankforge.data_tools.teacher_scoring import add_teacher_scores, load_teacher
from rerankforge.inference.auto import load_reranker
from rerankforge.inference.backend_choice import scoring_dtype
from rerankforge.inference.modeling.pair_encoding import model_position_limit
from rerankforge.inference.modeling.sources import resolve_model_path
from rerankforge.inference.sharded_scoring import compute_score_sharded, current_launch, process_device


def make_parser() -> argparse.ArgumentParser:
    """One sub-command per verb; each verb's arguments come from its own function, in --help's order."""
    parser = argparse.ArgumentParser(prog="rerankforge-data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_check_arguments(commands.add_parser("check", help="validate training JSONL and print statistics"))
    add_mine_arguments(
        commands.add_parser(
            "mine",
            help="write training JSONL with hard negatives (BM25, dense, hybrid or a run file), filtered",
        )
    )
    add_split_arguments(
        commands.add_parser(
            "split",
            help="write a BEIR folder with train and test qrels from one data set (by article or query)",
        )
    )
    add_score_arguments(
        commands.add_parser("score", help="add pos_scores / neg_scores from a teacher reranker")
    )
    return parser


def add_check_arguments(check: argparse.ArgumentParser) -> None:
    check.add_argument("paths", nargs="+", help="JSONL files or folders of them")
    check.add_argument("--tokenizer", help="tokenizer (folder or name) for token-length percentiles")
    check.add_argument(
        "--max-length", type=int, help="the model's maximum pair length (default: from the model)"
    )
    check.add_argument("--query-max-len", type=int, help="query budget to compare query lengths against")
    check.add_argument(
        "--passage-max-len", type=int, help="passage budget to compare passage lengths against"
    )
    check.add_argument(
        "--train-group-size", type=int, help="also require enough negatives for this group size"
    )
    check.add_argument(
        "--max-issues", type=int, default=50, help="problems shown before the rest are counted"
    )
    check.add_argument("--sample", type=int, default=20000, help="pairs tokenized for the length statistics")


def add_mine_arguments(mine: argparse.ArgumentParser) -> None:
    """The data set and its split, the mining options (`MiningArguments`, shared with recipes' ``mine_*``
    keys) and how the teacher runs."""
    mine.add_argument("data", help="BEIR folder, SQuAD JSON file, or BEIR Hub name")
    mine.add_argument("output", help="training JSONL to write")
    mine.add_argument("--split", default="train", help="BEIR qrels split; SQuAD: train, test or all")
    mine.add_argument("--run", help="a TREC run file to take candidates from instead of a retriever")
    mine.add_argument("--seed", type=int, default=0, help="seed of the negatives' (and queries') sampling")
    teacher = add_mining_flags(mine)
    teacher.add_argument("--teacher-batch-size", type=int, default=64)
    teacher.add_argument(
        "--teacher-dtype",
        choices=["float32", "bfloat16", "float16", "auto"],
        default="float32",
        help="its precision (auto: bfloat16 where the device computes in it, else float32)",
    )
    teacher.add_argument("--teacher-max-length", type=int, help="cap each teacher pair at this many tokens")
    teacher.add_argument(
        "--device", help="cpu, cuda, ... for the teacher and bi-encoder (default: cuda if any)"
    )
    mine.add_argument("--eval-fraction", type=float, default=0.2, help="SQuAD: share of articles held out")
    mine.add_argument("--split-seed", type=int, default=0, help="SQuAD: seed of the article split")


def add_split_arguments(to_beir: argparse.ArgumentParser) -> None:
    to_beir.add_argument("data", help="BEIR folder (its --split qrels are split by query) or SQuAD JSON file")
    to_beir.add_argument("output", help="BEIR folder to write (corpus.jsonl, queries.jsonl, qrels/)")
    to_beir.add_argument("--split", default="test", help="BEIR qrels split to divide")
    to_beir.add_argument(
        "--test-fraction", type=float, default=0.3, help="share of articles or queries in test"
    )
    to_beir.add_argument("--split-seed", type=int, default=0)


def add_score_arguments(score: argparse.ArgumentParser) -> None:
    score.add_argument("input", help="training JSONL (file or folder)")
    score.add_argument("output", help="training JSONL to write, with teacher scores")
    score.add_argument("--teacher", required=True, help="any reranker rerankforge.inference loads")
    score.add_argument("--batch-size", type=int, default=64)
    score.add_argument(
        "--max-batch-tokens", type=int, help="also cap each batch at this many padded tokens (e.g. 16384)"
    )
    score.add_argument(
        "--device",
        help="cpu, cuda, ... (default: cuda when available); under `accelerate launch` with N processes each "
        "process scores its shard on its own device (cuda:LOCAL_RANK, or cpu with --cpu) and --device is "
        "ignored with a warning",
    )
    score.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16", "auto"],
        default="float32",
        help="the teacher's precision (scores stay float32); bfloat16 is ~2.5x faster on CPUs with AVX-512 bf16 "
        "or AMX and far slower on CPUs without; auto: bfloat16 where the device computes in it, else float32",
    )
    score.add_argument(
        "--max-length",
        type=int,
        help="cap each pair at this many tokens (default: the teacher's own budgets)",
    )


def mine(args: argparse.Namespace) -> int:
    mining = mining_arguments_from(args)
    dataset = load_ir_split(args.data, args.split, args.eval_fraction, args.split_seed)
    dataset = sample_queries(dataset, mining.mine_max_queries, args.seed)
    run = read_trec_run(args.run, list(dataset.queries)) if args.run else None
    if run is not None and not run:
        raise ValueError(f"{args.run}: no line names a query of {dataset.name}")
    teacher = teacher_scorer(args) if mining.mine_teacher else None
    records, report = mine_from_dataset(dataset, mining.options(args.seed), mining.mine_retriever, run, teacher,
                                        mining.mine_dense_model, show_progress=True)  # fmt: skip
    if not records:
        raise ValueError(
            "no query kept a negative: " + "; ".join(report.lines() + report.problems()) + "; nothing written"
        )
    write_jsonl(records, args.output)
    source = f"run file {args.run}" if args.run else f"{mining.mine_retriever} retrieval"
    print(f"{args.output}: {len(records)} queries from {dataset.name}, negatives from {source}")
    for line in report.lines() + report.problems():
        print(line)
    return 0


def teacher_scorer(args: argparse.Namespace):

    dtype = scoring_dtype(args.teacher_dtype, args.device)
    return load_teacher(
        args.mine_teacher, args.device, dtype, args.teacher_batch_size, args.teacher_max_length
    )


def split(args: argparse.Namespace) -> int:

    dataset = load_ir_dataset(args.data, args.split)
    train, test = split_by_group(dataset, args.test_fraction, args.split_seed)
    write_beir(dataset, {"train": train.qrels, "test": test.qrels}, args.output)
    print(
        f"{args.output}: {len(dataset.corpus)} passages, qrels/train.tsv {len(train.qrels)} queries, "
        f"qrels/test.tsv {len(test.qrels)} queries (split by {'article' if dataset.doc_groups else 'query'})"
    )
    return 0


def score(args: argparse.Namespace) -> int:
    """Every process of a launch validates, loads the teacher and scores its shard; the main one writes."""

    files = resolve_data_files(args.input)
    try:
        load_train_dataset(files)  # validate every line before the teacher is loaded (on every process)
    except DataValidationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    records = [json.loads(text) for path in files for _, text in iter_lines(path)]  # as validation reads them

    launch = current_launch()
    device = process_device(launch, args.device)
    teacher = load_reranker(args.teacher, device=device, dtype=scoring_dtype(args.dtype, device))
    teacher.max_batch_tokens = args.max_batch_tokens

    def score_pairs(pairs: list[list[str]]) -> list[float]:
        return compute_score_sharded(teacher, pairs, launch, args.batch_size, args.max_length)

    scored = add_teacher_scores(records, score_pairs)
    if not launch.is_main_process:
        return 0
    write_jsonl(scored, args.output)
    processes = f" ({launch.num_processes} processes)" if launch.distributed else ""
    print(f"{args.output}: {len(records)} queries scored by {args.teacher}{processes}")
    return 0


def check(args: argparse.Namespace) -> int:
    files = resolve_data_files(args.paths)
    report = validate_files(files, args.train_group_size, max_issues=args.max_issues)
    print(f"files: {len(files)}")
    for line in count_summary(report):
        print(line)
    if not report.ok:
        print(f"\n{report.issue_count} problem(s):", file=sys.stderr)
        print(report.format(), file=sys.stderr)
        return 1
    if args.tokenizer:
        path = resolve_model_path(args.tokenizer)
        tokenizer = AutoTokenizer.from_pretrained(path)
        max_length = args.max_length
        if max_length is None:
            try:
                max_length = model_position_limit(AutoConfig.from_pretrained(path), tokenizer)
            except (OSError, ValueError):
                max_length = None
        stats = token_lengths(files, tokenizer, args.sample)
        print(f"\ntoken lengths ({args.tokenizer}, without special tokens except in 'pair'):")
        print(stats["query"].row(args.query_max_len))
        print(stats["passage"].row(args.passage_max_len))
        print(stats["pair"].row(max_length))
    print("\nno problems found")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return {"check": check, "mine": mine, "score": score, "split": split}[args.command](args)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run() -> None:
    sys.exit(main())

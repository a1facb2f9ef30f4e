"""`rerankforge-data`: `check` validates and summarises training JSONL, `mine` writes it with hard negatives
from a data set (filtered by a teacher against false negatives), `score` adds a teacher's scores for
distillation, `window` cuts passages longer than the model reads to their best window, `split` writes a BEIR
folder with train and test qrels, `long-docs` one of long documents (consecutive passages of an article)."""

from __future__ import annotations

import argparse
import json
import os
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
from rerankforge.data_tools.long_documents import DEFAULT_MAX_TOKENS, DEFAULT_MIN_TOKENS, build_long_documents
from rerankforge.data_tools.mining import mine_from_dataset, write_jsonl
from rerankforge.data_tools.mining_arguments import add_mining_flags, mining_arguments_from
from rerankforge.data_tools.passage_windows import BM25, CHOOSERS, TEACHER, cut_to_windows, window_stride
from rerankforge.data_tools.retrieval import read_trec_run
from rerankforge.data_tools.schema import DataValidationError, read_records, validate_files
from rerankforge.data_tools.sources import load_train_dataset, resolve_data_files
from rerankforge.data_tools.stats import count_summary, min_median_max, token_lengths
from rerankforge.data_tools.teacher_scoring import add_teacher_scores, load_teacher
from rerankforge.inference.auto import load_reranker
from rerankforge.inference.backend_choice import scoring_dtype
from rerankforge.inference.modeling.files import atomic_writer
from rerankforge.inference.modeling.pair_encoding import model_position_limit
from rerankforge.inference.modeling.sources import resolve_model_path
from rerankforge.inference.sharded_scoring import compute_score_sharded, current_launch, process_device


def program_name(alias: str) -> str:
    """The name a usage line shows: as invoked (`rerankforge data`, `rerankforge-data`), else ``alias`` (run as
    ``python -m``)."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return invoked if invoked.startswith("rerankforge") else alias


def make_parser() -> argparse.ArgumentParser:
    """One sub-command per verb; each verb's arguments come from its own function, in --help's order."""
    parser = argparse.ArgumentParser(prog=program_name("rerankforge-data"), description=__doc__)
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
    add_window_arguments(
        commands.add_parser(
            "window",
            help="cut every passage longer than --window tokens to one window (teacher's, BM25's, first)",
        )
    )
    add_long_docs_arguments(
        commands.add_parser(
            "long-docs",
            help="write a BEIR folder of long documents: consecutive passages of one article, never cut",
        )
    )
    return parser


def add_window_size_flags(parser: argparse.ArgumentParser, window_help: str, required: bool = False) -> None:
    parser.add_argument("--window", type=int, required=required, metavar="N", help=window_help)
    parser.add_argument(
        "--stride", type=int, metavar="S", help="tokens between window starts (default: half the window)"
    )


def add_check_arguments(check: argparse.ArgumentParser) -> None:
    check.add_argument(
        "paths", nargs="+", help="JSONL files or folders of them, or their names (fe-toy/normal)"
    )
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
    add_window_size_flags(
        check,
        "with --tokenizer: count the passages (all of them) longer than N tokens and show which window BM25 "
        "would keep (`window`'s report; nothing is written)",
    )


def add_mine_arguments(mine: argparse.ArgumentParser) -> None:
    """The data set and its split, the mining options (`MiningArguments`, shared with recipes' ``mine_*``
    keys) and how the teacher runs."""
    mine.add_argument(
        "data", help="BEIR folder or SQuAD JSON file (path or name: squad-v1.1-dev, cisi), or Hub id"
    )
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
    add_window_size_flags(
        mine,
        "then cut every passage longer than N tokens to one window, as `window` does (the teacher's best "
        "window when --teacher is given, else BM25's)",
    )
    mine.add_argument(
        "--window-tokenizer", metavar="MODEL", help="whose tokens --window counts (default: the teacher's)"
    )


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


def add_window_arguments(window: argparse.ArgumentParser) -> None:
    window.add_argument("input", help="training JSONL (file or folder)")
    window.add_argument("output", help="training JSONL to write; its report goes to OUTPUT.windows.json")
    window.add_argument(
        "--tokenizer", metavar="MODEL", help="the model whose tokens --window counts (default: --teacher)"
    )
    add_window_size_flags(window, "passages longer than N tokens keep one window of N tokens", required=True)
    window.add_argument(
        "--choose",
        choices=CHOOSERS,
        help="which window a long passage keeps: the teacher's best, BM25's best for the query, or the first "
        "(default: teacher when --teacher is given, else bm25)",
    )
    window.add_argument("--teacher", metavar="MODEL", help="any reranker rerankforge.inference loads")
    window.add_argument("--teacher-batch-size", type=int, default=64)
    window.add_argument(
        "--teacher-dtype", choices=["float32", "bfloat16", "float16", "auto"], default="float32"
    )
    window.add_argument("--device", help="cpu, cuda, ... for the teacher (default: cuda if any)")


def add_long_docs_arguments(long_docs: argparse.ArgumentParser) -> None:
    long_docs.add_argument("data", help="SQuAD JSON file or BEIR folder (passages of one title run on)")
    long_docs.add_argument(
        "output", help="BEIR folder to write (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)"
    )
    long_docs.add_argument("--tokenizer", required=True, metavar="MODEL", help="whose tokens lengths count")
    long_docs.add_argument("--min-tokens", type=int, default=DEFAULT_MIN_TOKENS)
    long_docs.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    long_docs.add_argument("--split", default="test", help="BEIR qrels split; SQuAD: train, test or all")
    long_docs.add_argument(
        "--eval-fraction", type=float, default=0.2, help="SQuAD: share of articles held out"
    )
    long_docs.add_argument("--split-seed", type=int, default=0, help="SQuAD: seed of the article split")


def load_tokenizer(name: str):
    return AutoTokenizer.from_pretrained(resolve_model_path(name))


def mine(args: argparse.Namespace) -> int:
    mining = mining_arguments_from(args)
    window_tokenizer = mine_window_tokenizer(args, mining.mine_teacher)
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
    windows = None
    if window_tokenizer is not None:
        chooser = TEACHER if teacher else BM25
        records, windows = cut_to_windows(
            records, window_tokenizer, args.window, args.stride, chooser, teacher
        )
    write_jsonl(records, args.output)
    source = f"run file {args.run}" if args.run else f"{mining.mine_retriever} retrieval"
    print(f"{args.output}: {len(records)} queries from {dataset.name}, negatives from {source}")
    for line in report.lines() + report.problems() + (windows.lines() if windows else []):
        print(line)
    return 0


def mine_window_tokenizer(args: argparse.Namespace, teacher: str | None):
    """The tokenizer `mine --window` counts with (None: no cut), checked before anything is mined."""
    if args.window is None:
        if args.stride is not None or args.window_tokenizer:
            raise ValueError("--stride and --window-tokenizer need --window")
        return None
    window_stride(args.window, args.stride)
    if not (args.window_tokenizer or teacher):
        raise ValueError(
            "--window needs --window-tokenizer MODEL (whose tokens it counts) when there is no --teacher"
        )
    return load_tokenizer(args.window_tokenizer or teacher)


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
    records = read_records(files)

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
    if args.window is not None and not args.tokenizer:
        raise ValueError("--window counts tokens: give --tokenizer MODEL")
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
        if args.window is not None:
            _, windows = cut_to_windows(read_records(files), tokenizer, args.window, args.stride, BM25)
            print(f"\npassages longer than the window ({args.tokenizer}; the window BM25 would keep):")
            for line in windows.lines():
                print(f"  {line}")
    print("\nno problems found")
    return 0


def window(args: argparse.Namespace) -> int:
    """Validate, cut, write the records and the report beside them."""
    choose = args.choose or (TEACHER if args.teacher else BM25)
    if choose == TEACHER and not args.teacher:
        raise ValueError("--choose teacher needs --teacher MODEL")
    if not (args.tokenizer or args.teacher):
        raise ValueError(
            "--window counts tokens: give --tokenizer MODEL (or --teacher, whose tokenizer it takes)"
        )
    window_stride(args.window, args.stride)
    files = resolve_data_files(args.input)
    report = validate_files(files)
    if not report.ok:
        print(f"error: {DataValidationError(report)}", file=sys.stderr)
        return 1
    tokenizer = load_tokenizer(args.tokenizer or args.teacher)
    teacher = None
    if choose == TEACHER:
        dtype = scoring_dtype(args.teacher_dtype, args.device)
        teacher = load_teacher(args.teacher, args.device, dtype, args.teacher_batch_size, None)
    records, windows = cut_to_windows(
        read_records(files), tokenizer, args.window, args.stride, choose, teacher
    )
    write_jsonl(records, args.output)
    report_path = f"{args.output}.windows.json"
    with atomic_writer(report_path) as handle:
        handle.write(json.dumps(windows.to_dict(), indent=2) + "\n")
    print(f"{args.output}: {len(records)} queries; report: {report_path}")
    for line in windows.lines():
        print(line)
    return 0


def long_docs(args: argparse.Namespace) -> int:
    tokenizer = load_tokenizer(args.tokenizer)

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    dataset, documents = build_long_documents(args.data, count_tokens, args.min_tokens, args.max_tokens,
                                              args.split, args.eval_fraction, args.split_seed)  # fmt: skip
    write_beir(dataset, {args.split: dataset.qrels}, args.output)
    lengths = [doc.tokens for doc in documents]
    passages = sum(len(doc.passage_ids) for doc in documents)
    print(
        f"{args.output}: {len(documents)} documents of {passages} passages, {len(dataset.queries)} queries "
        f"(qrels/{args.split}.tsv)"
    )
    print(f"tokens per document ({args.tokenizer}; min / median / max): {min_median_max(lengths)}")
    short, long = sum(n < args.min_tokens for n in lengths), sum(n > args.max_tokens for n in lengths)
    print(
        f"shorter than {args.min_tokens}: {short} (their article ran out, or the next passage would pass "
        f"{args.max_tokens}); longer than {args.max_tokens}: {long} (one passage alone)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        verbs = {"check": check, "mine": mine, "score": score, "split": split, "window": window,
                 "long-docs": long_docs}  # fmt: skip
        return verbs[args.command](args)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run() -> None:
    sys.exit(main())

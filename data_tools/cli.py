"""`rerankforge-data`: commands on training data (`check` validates and summarises JSONL files)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rerankforge.data_tools.schema import validate_files
from rerankforge.data_tools.sources import resolve_data_files
from rerankforge.data_tools.stats import count_summary, token_lengths


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rerankforge-data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate training JSONL and print statistics")
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
    return parser


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
        from transformers import AutoConfig, AutoTokenizer

        from rerankforge.data_tools.pair_encoding import model_position_limit
        from rerankforge.trainer.modeling.sources import resolve_model_path

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
        if args.command == "check":
            return check(args)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 2


def run() -> None:
    sys.exit(main())

"""`rerankforge VERB [ARGS ...]`: one command for every tool, so a newcomer has one name to remember.

`rerankforge train ...` runs exactly what `rerankforge-train ...` runs (the aliases stay): the verb's own `main`
on the rest of the command line, whose exit code is this command's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rerankforge.data_tools.cli import main as data_main
from rerankforge.trainer.cli import main as train_main
from rerankforge.trainer.eval_cli import main as eval_main
from rerankforge.trainer.export import main as export_main

PROGRAM = "rerankforge"


@dataclass(frozen=True)
class Verb:
    main: Callable[[Sequence[str]], int]  # the alias's own entry function: argv -> exit code
    purpose: str  # its one line in `rerankforge --help`


# one per `rerankforge-*` console script of setup.cfg (tests/test_command_line.py keeps the two alike)
VERBS = {
    "train": Verb(train_main, "fine-tune a reranker: a recipe (YAML), then --key value overrides"),
    "eval": Verb(
        eval_main,
        "rerank a first stage's top k with a model and compare; measure or fit a calibration",
    ),
    "data": Verb(
        data_main,
        "check training JSONL; mine hard negatives, add teacher scores, cut windows, write BEIR folders",
    ),
    "export": Verb(
        export_main,
        "write a self-contained model folder with its card (merged, or as a classifier); push it to the Hub",
    ),
}


def make_parser() -> argparse.ArgumentParser:
    """The verbs and their purpose; it parses the verb alone, the verb's own parser the rest."""
    width = max(map(len, VERBS))
    verbs = "\n".join(f"  {name:<{width}}  {verb.purpose}" for name, verb in VERBS.items())
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        usage=f"{PROGRAM} [-h] VERB [ARGS ...]",
        description=f"{__doc__.splitlines()[0].replace('`', '')}\n\nverbs:\n{verbs}",
        epilog=f"`{PROGRAM} VERB --help` gives a verb's own options; `{PROGRAM}-VERB` is the same command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("verb", choices=VERBS, metavar="VERB", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the verb's entry function on the rest of the command line; its exit code is this one's."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in VERBS:
        make_parser().parse_args(argv[:1])  # --help lists the verbs
        return 2  # not reached: parse_args exits (0 for --help, 2 for a missing or unknown verb)
    verb, rest = argv[0], argv[1:]
    program = sys.argv[0]
    sys.argv[0] = f"{PROGRAM} {verb}"  # the verb's usage lines name it as typed (argparse's default prog)
    try:
        return VERBS[verb].main(rest)
    finally:
        sys.argv[0] = program


def run() -> None:
    sys.exit(main())

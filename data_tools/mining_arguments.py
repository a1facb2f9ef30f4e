"""The hard-negative mining options, declared once: a recipe's ``mine_*`` keys and `rerankforge-data mine`'s
flags (the same names without ``mine_``: ``mine_rank_range`` is ``--rank-range``) are both parsed from
`MiningArguments`, so the two cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field

from rerankforge.data_tools.dense_retrieval import DEFAULT_DENSE_MODEL
from rerankforge.data_tools.first_stage import RETRIEVERS
from rerankforge.data_tools.mining import MARGIN_REFERENCES, SAMPLING, MiningOptions

PREFIX = "mine_"
CHOICES = {
    "mine_retriever": RETRIEVERS,
    "mine_sampling": SAMPLING,
    "mine_margin_reference": tuple(MARGIN_REFERENCES),
}
TEACHER_FIELDS = ("mine_teacher", "mine_absolute_margin", "mine_relative_margin", "mine_max_score",
                  "mine_margin_reference", "mine_output_scores")  # fmt: skip


@dataclass
class MiningArguments:
    """How hard negatives are mined: the first stage, the rank range and sampling, and the teacher's
    false-negative filters (docs/mining.md)."""

    mine_num_negatives: int = field(default=15, metadata={"help": "Hard negatives mined per query."})
    mine_rank_range: list[int] = field(
        default_factory=lambda: [10, 100],
        metadata={"help": "First-stage ranks (first, last; 1 = best; both included) negatives come from.",
                  "nargs": 2},
    )  # fmt: skip
    mine_retriever: str = field(
        default="bm25",
        metadata={"help": "First stage: bm25, dense (a sentence-transformers bi-encoder) or hybrid (their "
                          "reciprocal-rank fusion); rerankforge-data mine's --run replaces it."},
    )  # fmt: skip
    mine_dense_model: str = field(
        default=DEFAULT_DENSE_MODEL, metadata={"help": "Bi-encoder of the dense and hybrid retrievers."}
    )
    mine_sampling: str = field(
        default="random",
        metadata={"help": "random (a seeded sample) or top (the best-ranked) of the rank range's survivors."},
    )
    mine_max_queries: int | None = field(
        default=None, metadata={"help": "Mine (and so train on) a seeded sample of this many judged queries."}
    )
    mine_teacher: str | None = field(
        default=None,
        metadata={
            "help": "Any reranker rerankforge.inference loads: rescores the candidates for the filters."
        },
    )
    mine_absolute_margin: float | None = field(
        default=None, metadata={"help": "Drop a negative the teacher scores above p(positive) - this."}
    )
    mine_relative_margin: float | None = field(
        default=None, metadata={"help": "Drop a negative the teacher scores above p(positive) x (1 - this)."}
    )
    mine_max_score: float | None = field(
        default=None, metadata={"help": "Drop a negative the teacher scores above this probability."}
    )
    mine_margin_reference: str = field(
        default="max",
        metadata={"help": "With several positives, the margins compare with their best (max), mean or weakest "
                          "(min) teacher score."},
    )  # fmt: skip
    mine_output_scores: bool = field(
        default=False,
        metadata={"help": "Keep the teacher's raw scores as pos_scores / neg_scores (for distillation)."},
    )

    def __post_init__(self) -> None:
        if self.mine_dense_model is None:  # a recipe's explicit null: the default bi-encoder
            self.mine_dense_model = DEFAULT_DENSE_MODEL
        if len(self.mine_rank_range) != 2 or not 1 <= self.mine_rank_range[0] <= self.mine_rank_range[1]:
            raise ValueError(
                f"mine_rank_range must be [first, last] with 1 <= first <= last, got {self.mine_rank_range}"
            )
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.mine_max_queries is not None and self.mine_max_queries < 1:
            raise ValueError(f"mine_max_queries must be at least 1, got {self.mine_max_queries}")
        if self.options(seed=0).needs_teacher and not self.mine_teacher:  # options() checks the rest
            raise ValueError(
                "mine_absolute_margin, mine_relative_margin, mine_max_score and mine_output_scores need mine_teacher"
            )

    def options(self, seed: int) -> MiningOptions:
        """The options `mine_from_dataset` takes; ``seed`` samples the negatives (a run's own seed)."""
        return MiningOptions(
            num_negatives=self.mine_num_negatives,
            rank_range=(self.mine_rank_range[0], self.mine_rank_range[1]),
            sampling=self.mine_sampling,
            seed=seed,
            absolute_margin=self.mine_absolute_margin,
            relative_margin=self.mine_relative_margin,
            max_score=self.mine_max_score,
            output_scores=self.mine_output_scores,
            margin_reference=self.mine_margin_reference,
        )


def flag(name: str) -> str:
    """`rerankforge-data mine`'s flag of a field: ``mine_rank_range`` -> ``--rank-range``."""
    return "--" + name.removeprefix(PREFIX).replace("_", "-")


def add_mining_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """One flag per `MiningArguments` field, with its default and help; the teacher's in a group of their own,
    which is returned (a command adds its teacher's batch size and precision there)."""
    hints = typing.get_type_hints(MiningArguments)
    teacher = parser.add_argument_group(
        "false-negative filters (need --teacher; they read the teacher's probability, sigmoid of its score, "
        "against the query's best-scored positive, or see --margin-reference)"
    )
    for item in dataclasses.fields(MiningArguments):
        target = teacher if item.name in TEACHER_FIELDS else parser
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        options = {"dest": item.name, "default": default, "help": item.metadata["help"]}
        kind = hints[item.name]
        if kind is bool:
            target.add_argument(flag(item.name), action="store_true", **options)
            continue
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None: X
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        if typing.get_origin(kind) is list:
            options.update(nargs=item.metadata["nargs"], metavar=("FIRST", "LAST"))
            kind = typing.get_args(kind)[0]
        else:
            options["metavar"] = None if item.name in CHOICES else item.name.removeprefix(PREFIX).upper()
        target.add_argument(flag(item.name), type=kind, choices=CHOICES.get(item.name), **options)
    return teacher


def mining_arguments_from(args: argparse.Namespace) -> MiningArguments:
    """The `MiningArguments` a parser built by `add_mining_flags` read; an error names the command's flags."""
    names = [item.name for item in dataclasses.fields(MiningArguments)]
    try:
        return MiningArguments(**{name: getattr(args, name) for name in names})
    except ValueError as error:
        message = str(error)
        for name in sorted(names, key=len, reverse=True):  # mine_max_score before a shorter name inside it
            message = message.replace(name, flag(name))
        raise ValueError(message) from None

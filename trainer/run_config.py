"""One run's settings as three dataclasses parsed from one flat recipe, as trl parses its script, training and
model arguments: the family's training config (model, group size, loss, `TrainingArguments`), the data
(`DataArguments`) and the mining options (`MiningArguments`, which `rerankforge-data mine` parses too).

A recipe's keys stay flat (``train_data``, ``mine_rank_range``, ``learning_rate`` side by side), and each key
lands in the one dataclass that declares it; a key none declares is an error naming the recipe.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import HfArgumentParser

from rerankforge.data_tools.mining_arguments import MiningArguments
from rerankforge.inference.modeling.families import get_family
from rerankforge.inference.modeling.precision import resolve_auto_bf16
from rerankforge.trainer.config import RerankerConfig
from rerankforge.trainer.data_arguments import DataArguments

logger = logging.getLogger(__name__)


class RecipeError(ValueError):
    """A recipe that cannot be used as written: its message names the file and the key."""


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run reads; none of it is rewritten while the run goes."""

    training: RerankerConfig  # the family's config: model, loss, and the Trainer's own arguments
    data: DataArguments
    mining: MiningArguments

    @classmethod
    def from_settings(cls, source: str = "settings", /, **settings: Any) -> RunConfig:
        """A run from recipe keys given as Python values (no command line); errors name ``source``."""
        return run_config_from_recipe(settings, [], source)


def family_from_argv(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--family" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--family="):
            return arg.split("=", 1)[1]
    return None


def run_parser(config_class: type[RerankerConfig], description: str | None = None) -> HfArgumentParser:
    """One parser for the three dataclasses: every recipe key is a ``--key`` option of exactly one."""
    # the usage line a newcomer reads first: the 150 options follow, each a recipe key
    usage = "%(prog)s RECIPE.yaml [--key value ...]  (every option below is also a recipe key)"
    return HfArgumentParser(
        (config_class, DataArguments, MiningArguments), description=description, usage=usage
    )


def run_config_from_recipe(
    recipe: dict[str, Any], argv: Sequence[str], source: str, description: str | None = None
) -> RunConfig:
    """The run from recipe keys (Python values) and ``--key value`` overrides, the family's config class chosen
    by ``family``; errors name ``source`` (the recipe file, or the Python call); ``description`` heads
    ``--help``."""
    recipe, argv = resolve_auto_bf16(recipe, list(argv))
    family_name = family_from_argv(argv) or recipe.get("family", "cross_encoder")
    config_class = get_family(family_name).config_class
    known = {f.name for kind in (config_class, DataArguments, MiningArguments) for f in dataclasses.fields(kind)
             if f.init}  # fmt: skip
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise RecipeError(f"{source}: unknown key(s) {', '.join(unknown)} for family {family_name!r}")
    parser = run_parser(config_class, description)
    parser.set_defaults(**recipe)
    for action in parser._actions:  # a value the recipe gives satisfies a required option
        if action.dest in recipe:
            action.required = False
    training, data, mining = parser.parse_args_into_dataclasses(args=argv)
    if not data.mines and mining != MiningArguments():  # given, and nothing will read it: said, not dropped
        changed = [
            f.name
            for f in dataclasses.fields(MiningArguments)
            if getattr(mining, f.name) != getattr(MiningArguments(), f.name)
        ]
        logger.warning(
            "%s: %s have no effect: train_data is given, so nothing is mined", source, ", ".join(changed)
        )
    return RunConfig(training, data, mining)

"""`rerankforge train RECIPE.yaml [--key value ...]` (or `rerankforge-train`): the recipe sets defaults, the
command line overrides them."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from rerankforge.data_tools.schema import DataValidationError
from rerankforge.inference.modeling.file_checks import ModelFilesError
from rerankforge.trainer.checkpoints import CheckpointWriteError
from rerankforge.trainer.config import RerankerConfig
from rerankforge.trainer.memory_check import MemoryEstimateError
from rerankforge.trainer.nan_guard import NonFiniteTrainingError
from rerankforge.trainer.preemption import EXIT_PREEMPTED, TrainingPreempted
from rerankforge.trainer.run_config import RecipeError, RunConfig, run_config_from_recipe, run_parser
from rerankforge.trainer.training_run import train

EXIT_BAD_INPUT = 2  # a recipe, option or data file that cannot be used as written
EXIT_NON_FINITE = 3  # the loss or gradient norm went NaN/inf (trainer/nan_guard.py)
EXIT_OUT_OF_MEMORY = 4  # one step will not fit in memory (trainer/memory_check.py)
EXIT_WRITE_FAILED = 5  # a checkpoint or the final model could not be written (a full disk)


def load_recipe(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        recipe = yaml.safe_load(handle) or {}
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys to values, got {type(recipe).__name__}")
    return recipe


def make_parser(config_class: type[RerankerConfig]) -> HfArgumentParser:
    """The command line's parser for a family: its config's, the data's and the mining options' ``--key``s."""
    return run_parser(config_class, description=__doc__)


def parse_config(argv: Sequence[str]) -> RunConfig:
    """Build the run from an optional recipe path followed by ``--key value`` overrides."""
    argv = list(argv)
    recipe: dict[str, Any] = {}
    recipe_path = None
    if argv and not argv[0].startswith("-"):
        recipe_path = argv.pop(0)
        recipe = load_recipe(recipe_path)
    return run_config_from_recipe(recipe, argv, source=str(recipe_path), description=__doc__)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, train, save; returns the process exit code (2 for bad recipes or bad data)."""
    main_process = os.environ.get("RANK", "0") == "0"  # other ranks log warnings only
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if main_process else logging.WARNING,
    )
    try:
        run = parse_config(sys.argv[1:] if argv is None else argv)
    except (ValueError, OSError) as error:  # RecipeError, the config's own checks, a recipe path not there
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    exit_codes = {
        DataValidationError: EXIT_BAD_INPUT,
        FileNotFoundError: EXIT_BAD_INPUT,
        ModelFilesError: EXIT_BAD_INPUT,
        NonFiniteTrainingError: EXIT_NON_FINITE,
        CheckpointWriteError: EXIT_WRITE_FAILED,
        MemoryEstimateError: EXIT_OUT_OF_MEMORY,
        TrainingPreempted: EXIT_PREEMPTED,
    }
    try:
        train(run)
    except tuple(exit_codes) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return next(code for kind, code in exit_codes.items() if isinstance(error, kind))
    return 0


def run() -> None:
    sys.exit(main())

"""`train(recipe, **overrides)`: from Python, what `rerankforge-train RECIPE --key value ...` runs.

A recipe path (YAML) or a `RunConfig` sets the run, keyword arguments override its keys with Python values
(lists and dicts as they are, no string parsing), and the result names the output folder and the final
figures. Errors are raised, not turned into exit codes as the command line does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerankforge.trainer.cli import load_recipe
from rerankforge.trainer.config import RerankerConfig
from rerankforge.trainer.run_config import RunConfig, run_config_from_recipe
from rerankforge.trainer.training_run import train as run_training

RESULTS_FILE = "all_results.json"  # the Trainer's save_metrics: train_* and eval_* figures together


@dataclass(frozen=True)
class TrainingResult:
    output_dir: Path  # the final model, loadable with load_reranker
    metrics: dict[str, float]  # train_* (loss, runtime) and, with evaluation data, eval_* after training


def train(recipe: str | Path | RunConfig | None = None, /, **overrides: Any) -> TrainingResult:
    """Train one reranker and save it; ``recipe`` a YAML recipe, a `RunConfig`, or None (keywords only)."""
    if isinstance(recipe, RerankerConfig):
        raise TypeError(
            "train() takes a recipe or a RunConfig (training, data and mining settings); build one with "
            "RunConfig.from_settings(**recipe_keys)"
        )
    if isinstance(recipe, RunConfig):
        if overrides:  # its fields were derived from each other when it was made: set them there
            raise TypeError(
                f"train(run_config) takes no overrides ({', '.join(overrides)}): set them on the config"
            )
        run = recipe
    else:
        settings = load_recipe(recipe) if recipe is not None else {}
        run = run_config_from_recipe({**settings, **overrides}, [], source=str(recipe or "train()"))
    output_dir = run_training(run)
    results = output_dir / RESULTS_FILE
    metrics = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {}
    return TrainingResult(output_dir, metrics)

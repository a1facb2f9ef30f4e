"""Runs in rerankforge's environment: one cross-encoder training run through rerankforge's own path, timed step
by step exactly as `flag_train_worker.py` times FlagEmbedding's.

    .venv/bin/python benchmarks/rerankforge_train_worker.py --model_name_or_path M --train_data D ...

The arguments are the same command line FlagEmbedding's worker gets (rerankforge accepts FlagEmbedding's argument
names); they are parsed by `rerankforge-train`'s parser into the `cross_encoder` family's config, and the run
follows `rerankforge.trainer.training_run.train`: data preparation, validated loading, seeded model, the family's
Trainer. Only the final save and evaluation are left out (not training speed; FlagEmbedding's worker leaves its
save out too). Prints ONE JSON line to stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flag_train_worker import (  # noqa: E402
    BatchShapeRecorder,
    StepTimer,
    parameter_checksum,
    result_line,
    worker_main,
)
from transformers import set_seed  # noqa: E402

from rerankforge.data_tools.sources import load_train_dataset  # noqa: E402
from rerankforge.trainer.cli import parse_config  # noqa: E402
from rerankforge.trainer.families import build_trainer  # noqa: E402
from rerankforge.trainer.training_run import prepare_data  # noqa: E402


def train_rerankforge(argv: Sequence[str]) -> str:
    """Config, data and Trainer as `rerankforge-train` builds them; train; return the result line."""
    config = parse_config(list(argv))
    prepared = prepare_data(config)  # no evaluation set here: the benchmark does not evaluate
    records = load_train_dataset(
        prepared.train_files, config.training.train_group_size, config.training.needs_teacher_scores
    )
    set_seed(config.training.seed)  # before the model is built, as train() does
    trainer = build_trainer(config.training, records, prepared.eval_set)
    timer, shapes = StepTimer(), BatchShapeRecorder(trainer.data_collator)
    trainer.data_collator = shapes  # the dataloader is built inside train(), from this attribute
    trainer.add_callback(timer)
    checksum = parameter_checksum(trainer.model)
    trainer.train()
    versions = {"rerankforge": version("rerankforge"), "datasets": version("datasets")}
    return result_line("rerankforge", timer, shapes, trainer.model.config, checksum, versions)


if __name__ == "__main__":
    worker_main(train_rerankforge)

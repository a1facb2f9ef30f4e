"""One training run, start to finish: validate data, build the family's trainer, train, save."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from rerankforge.data_tools.sources import load_train_dataset
from rerankforge.trainer.config import RerankerConfig
from rerankforge.trainer.families import get_family

logger = logging.getLogger(__name__)


def resolve_resume(config: RerankerConfig) -> str | None:
    """``auto`` means the newest checkpoint in output_dir (none yet: start fresh)."""
    if config.resume_from_checkpoint != "auto":
        return config.resume_from_checkpoint
    if not Path(config.output_dir).is_dir():
        return None
    return get_last_checkpoint(config.output_dir)


def train(config: RerankerConfig) -> Path:
    """Train and save the final model into ``config.output_dir``; returns that folder."""
    family = get_family(config.family)
    # data problems surface here, before any weights are read
    records = load_train_dataset(config.train_data, config.train_group_size, config.knowledge_distillation)
    logger.info("loaded %d training queries from %s", len(records), ", ".join(config.train_data))
    set_seed(config.seed)  # before the model is built, so a fresh score head is reproducible
    trainer = family.build_trainer(config, records)
    result = trainer.train(resume_from_checkpoint=resolve_resume(config))
    trainer.save_model(config.output_dir)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    return Path(config.output_dir)

"""Cross-encoder training: the base trainer as it is; the model object scores each pair with its one logit."""

from __future__ import annotations

from rerankforge.trainer.base_trainer import RerankerTrainer
from rerankforge.trainer.cross_encoder_config import CrossEncoderConfig


class CrossEncoderTrainer(RerankerTrainer):
    """Nothing of its own: `CrossEncoderModel` scores the pairs (in length-sorted slices on the CPU)."""

    args: CrossEncoderConfig

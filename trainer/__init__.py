"""Fine-tuning rerankers with the Hugging Face Trainer: `train(recipe, **overrides)` from Python, or
`rerankforge-train RECIPE --key value` from the command line (trainer/cli.py)."""

from rerankforge.trainer.python_api import TrainingResult, train
from rerankforge.trainer.run_config import RunConfig

__all__ = ["RunConfig", "TrainingResult", "train"]

"""The ranking metrics as an `evaluate` module: ``evaluate.load(rerank_metric.MODULE_DIR)``, offline."""

from pathlib import Path

MODULE_DIR = str(Path(__file__).resolve().parent)

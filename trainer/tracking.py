"""What a person watches during a run: score histograms at each evaluation, and curves saved as a PNG.

A reranker that collapses to one score for everything still has a loss; its histograms of positive and negative
scores show the collapse at a glance. Scalars (losses, per-layer losses, eval metrics) and the run config are
logged by the Trainer's own W&B and TensorBoard callbacks; these callbacks add what they do not.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

logger = logging.getLogger(__name__)
CURVES_FILE = "training_curves.png"


class ScoreHistogramCallback(TrainerCallback):
    """After each evaluation: histograms of the scores of judged-relevant and other candidates."""

    def __init__(self, eval_pairs, trainer):
        self.eval_pairs = eval_pairs
        self.trainer = trainer

    def on_evaluate(self, args, state, control, **kwargs):
        scores = getattr(self.eval_pairs, "last_scores", None)
        if not state.is_world_process_zero or not scores:
            return
        finite = [
            (s, relevant) for s, relevant in scores if math.isfinite(s)
        ]  # NaN scores are in the metrics
        positives = [s for s, relevant in finite if relevant]
        negatives = [s for s, relevant in finite if not relevant]
        if not positives and not negatives:
            return
        if "wandb" in args.report_to:
            import wandb  # optional: the [tracking] extra

            if wandb.run is not None:
                wandb.run.log(
                    {"eval/positive_scores": wandb.Histogram(positives),
                     "eval/negative_scores": wandb.Histogram(negatives),
                     "train/global_step": state.global_step},
                )  # fmt: skip
        if "tensorboard" in args.report_to:
            for callback in self.trainer.callback_handler.callbacks:
                writer = (
                    getattr(callback, "tb_writer", None)
                    if isinstance(callback, TensorBoardCallback)
                    else None
                )
                if writer is not None:
                    for name, values in (("positive", positives), ("negative", negatives)):
                        if values:  # TensorBoard refuses an empty histogram
                            writer.add_histogram(f"eval/{name}_scores", np.array(values), state.global_step)
                    writer.flush()


class RunSettingsCallback(TrainerCallback):
    """Adds the run's data and mining settings to the W&B run's config, beside the TrainingArguments that
    transformers' WandbCallback sends (they are dataclasses of their own, so it does not see them)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if "wandb" not in args.report_to or not state.is_world_process_zero or not self.trainer.run_settings:
            return
        import wandb  # optional: the [tracking] extra

        if wandb.run is not None:
            wandb.run.config.update(self.trainer.run_settings, allow_val_change=True)


class TrainingCurvesCallback(TrainerCallback):
    """At the end of training: loss (and nDCG@10, when evaluated) over steps, as a PNG in output_dir."""

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            try:
                plot_training_curves(state.log_history, Path(args.output_dir) / CURVES_FILE)
            except ImportError:
                logger.warning("matplotlib is not installed: no %s", CURVES_FILE)


def plot_training_curves(log_history: list[dict], path: Path) -> Path | None:
    import matplotlib  # imported only when a plot is drawn: the Agg backend is chosen first

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # imported only when a plot is drawn: the Agg backend is chosen first

    losses = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    ndcg = [(e["step"], e["eval_ndcg@10"]) for e in log_history if "eval_ndcg@10" in e]
    if not losses and not ndcg:
        return None
    figure, loss_axis = plt.subplots(figsize=(8, 4.5))
    if losses:
        loss_axis.plot(*zip(*losses, strict=True), color="tab:blue", label="training loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    if ndcg:
        ndcg_axis = loss_axis.twinx()
        ndcg_axis.plot(*zip(*ndcg, strict=True), color="tab:orange", marker="o", label="eval nDCG@10")
        ndcg_axis.set_ylabel("eval nDCG@10", color="tab:orange")
    loss_axis.set_title("rerankforge training")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path

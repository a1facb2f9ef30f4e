"""The thin base every family's Trainer shares: the model object's scores, the injected objective, spec saving.

The Trainer's own save and load paths do the rest: a family model is a `PreTrainedModel` (saved through its
`save_pretrained`, resumed through `load_state_dict`), or a peft model around one (adapter and heads).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from rerankforge.data_tools.grouping import GroupedDataset
from rerankforge.inference.modeling.base import RerankerModel
from rerankforge.inference.modeling.files import atomic_write_text
from rerankforge.inference.modeling.lora import unwrap_adapters
from rerankforge.trainer.checkpoints import (
    MARKER,
    WRITE_ERRORS,
    CheckpointWriteError,
    is_write_failure,
    latest_complete_checkpoint,
    mark_complete,
    rotate_complete_checkpoints,
    write_failure_message,
)
from rerankforge.trainer.config import RerankerConfig
from rerankforge.trainer.loss_parts import LossPartMeans
from rerankforge.trainer.nan_guard import SKIP_UNDER_DEEPSPEED, NanGuard, RunFacts
from rerankforge.trainer.preemption import PreemptionCallback
from rerankforge.trainer.tracking import RunSettingsCallback, ScoreHistogramCallback, TrainingCurvesCallback

TRAINING_ARGS_JSON = "training_args.json"


class GroupEpochCallback(TrainerCallback):
    """Tells the grouped dataset which epoch starts, so negatives are re-drawn each epoch.

    accelerate forwards ``set_epoch`` to the dataset only when its sampler has none (not so under DDP),
    so the trainer sets it here, before the epoch's dataloader is iterated. After a resume the epoch comes
    from the restored state, so the resumed run draws the groups an uninterrupted run would.
    """

    def __init__(self, dataset: object):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(int(state.epoch + 1e-6))


class RerankerTrainer(Trainer):
    """A `transformers.Trainer` whose model returns scores and whose loss works on ``[groups, group_size]`` of them.

    The model is a family model (`RerankerModel`), or a peft model around one; ``model(**batch)`` is its score.
    The group shape comes from the batch the collator built, so a short last batch trains like any other. The
    objective is the config's `build_objective` (``loss``, ``distill_loss``; the layerwise family's sums it over
    layers).
    """

    args: RerankerConfig

    def __init__(
        self,
        *args: Any,
        eval_data_collator: Callable[[list], dict[str, Any]] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if not isinstance(self.reranker, RerankerModel):
            raise TypeError(
                f"the model must be a family model (RerankerModel), got {type(self.reranker).__name__}"
            )
        self.eval_data_collator = eval_data_collator
        # the run's data and mining settings (training_run sets them): saved with the arguments, sent to W&B
        self.run_settings: dict[str, Any] = {}
        if self.args.dataloader_persistent_workers:
            raise ValueError(
                "dataloader_persistent_workers would keep each epoch's groups stale; leave it off"
            )
        self.add_callback(GroupEpochCallback(self.train_dataset))
        self.add_callback(TrainingCurvesCallback())
        self.add_callback(RunSettingsCallback(self))
        if self.eval_dataset is not None and hasattr(self.eval_dataset, "last_scores"):
            self.add_callback(ScoreHistogramCallback(self.eval_dataset, self))
        self.objective = self.args.build_objective()
        self.reranker.spec.loss = self.objective.get_config_dict()  # rerankforge.json records what trained it
        self.loss_parts = LossPartMeans()
        self.add_callback(self.loss_parts)
        if (
            self.args.nan_policy == "skip" and self.is_deepspeed_enabled
        ):  # also when set in the accelerate config
            raise ValueError(SKIP_UNDER_DEEPSPEED)
        self.nan_guard = self._build_nan_guard()
        self.preemption = PreemptionCallback(self)
        self.add_callback(self.preemption)

    def _build_nan_guard(self) -> NanGuard:
        args = self.args
        facts = RunFacts(
            learning_rate=args.learning_rate,
            max_grad_norm=args.max_grad_norm,
            fp16=args.fp16,
            bf16=args.bf16,
            total_steps=lambda: self.state.max_steps,
            newest_checkpoint=lambda: str(latest_complete_checkpoint(args.output_dir) or "") or None,
        )
        scaler = self.accelerator.scaler is not None or bool(self.is_deepspeed_enabled and args.fp16)
        return NanGuard(args.nan_policy, args.nan_max_consecutive_skips, facts, uses_loss_scaler=scaler)

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch=None
    ) -> torch.Tensor:
        """The Trainer's step; then the micro-batch's loss goes to the NaN guard (read where the Trainer's own
        NaN filter reads it)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        steps = getattr(
            self, "current_gradient_accumulation_steps", 1
        )  # the loss is divided by it for backward
        self.nan_guard.after_micro_batch(loss * steps, self.state.global_step + 1)
        return loss

    # a private Trainer method (no public hook), read against transformers 5.9-5.25: tests/test_trainer_hooks.py
    def _get_grad_norm(self, model: torch.nn.Module, grad_norm=None):
        """The Trainer's gradient norm (computed every step), seen by the NaN guard before the optimizer step."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self.nan_guard.after_gradients(
            grad_norm,
            self.state.global_step + 1,
            drop_gradients=lambda: model.zero_grad(set_to_none=True),
            any_process=self.true_on_any_process,
        )
        return grad_norm

    def check_weights_finite(self) -> None:
        """No checkpoint or final model of non-finite weights (trainable ones: the rest cannot have changed)."""
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.nan_guard.check_weights(trainable, self.state.global_step)

    # a private Trainer method (no public hook), read against transformers 5.9-5.25: tests/test_trainer_hooks.py
    def _finalize_training(self, trial: Any, num_train_samples: int, start_time: float):
        """After a SIGTERM stop, the Trainer's end must not load the best model (time the grace period lacks) nor,
        with save_total_limit 1, delete the checkpoint just written."""
        if self.preemption.stopped_at_step is None:
            return super()._finalize_training(trial, num_train_samples, start_time)
        saved = self.args.load_best_model_at_end, self.state.best_model_checkpoint
        self.args.load_best_model_at_end, self.state.best_model_checkpoint = False, None
        try:
            return super()._finalize_training(trial, num_train_samples, start_time)
        finally:
            self.args.load_best_model_at_end, self.state.best_model_checkpoint = saved

    def true_on_any_process(self, flag: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return flag
        found = torch.tensor([1.0 if flag else 0.0], device=self.args.device)
        return bool(self.accelerator.reduce(found, reduction="sum").item() > 0)

    def train(self, *args: Any, **kwargs: Any):
        """The Trainer's loop; SIGTERM's handler (installed when training begins) goes away however it ends."""
        try:
            return super().train(*args, **kwargs)
        finally:
            self.preemption.restore_handlers()

    # a private Trainer method (no public hook), read against transformers 5.9-5.25: tests/test_trainer_hooks.py
    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Resuming a multi-process CPU run: transformers up to at least 5.17 maps the optimizer state to the
        process's device, ``cpu:0``, which torch.load refuses ("don't know how to restore data location"), so the
        resume failed; plain ``cpu`` is the same memory (newer releases map it so themselves)."""
        device = self.args.device
        if self.args.world_size == 1 or device.type != "cpu" or device.index is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        cached = self.args.__dict__.get(
            "_setup_devices"
        )  # TrainingArguments.device reads this cached property
        self.args.__dict__["_setup_devices"] = torch.device("cpu")
        try:
            return super()._load_optimizer_and_scheduler(checkpoint)
        finally:
            self.args.__dict__["_setup_devices"] = cached

    @property
    def reranker(self) -> RerankerModel:
        """The family model inside the Trainer's wrappers (DDP, DeepSpeed, peft)."""
        return unwrap_adapters(self.accelerator.unwrap_model(self.model))

    @property
    def spec(self):
        return self.reranker.spec

    def get_eval_dataloader(self, eval_dataset: str | Dataset | None = None) -> DataLoader:
        """Evaluation batches come from ``eval_data_collator`` when there is one: evaluation scores pairs
        with the lengths the saved model will use, which may be longer than training's."""
        with self._scoring_collator():
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset: Dataset) -> DataLoader:
        """`predict` scores with the saved model's lengths too."""
        with self._scoring_collator():
            return super().get_test_dataloader(test_dataset)

    @contextmanager
    def _scoring_collator(self) -> Iterator[None]:
        """The Trainer builds every dataloader from ``self.data_collator``: lend it the scoring collator."""
        if self.eval_data_collator is None:
            yield
            return
        training_collator = self.data_collator
        self.data_collator = self.eval_data_collator
        try:
            yield
        finally:
            self.data_collator = training_collator

    def score(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[rows]`` float32 scores in batch order, or ``[rows, heads]`` for a model with several heads."""
        inputs = {k: v for k, v in batch.items() if k in self.reranker.input_names()}
        return as_columns(model(**inputs))

    def compute_loss(
        self,
        model: PreTrainedModel,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        group_size = int(inputs.pop("group_size"))
        teacher_scores = inputs.pop("teacher_scores", None)
        scores = model(**inputs)
        if isinstance(scores, dict):  # several heads (the layerwise family): {"layer<k>": [rows]}
            grouped = {k: s.view(-1, group_size) for k, s in scores.items()}
        else:
            grouped = scores.view(-1, group_size)
        loss, parts = self.objective(grouped, teacher_scores)
        if model.training:
            self.loss_parts.add(parts, getattr(self, "current_gradient_accumulation_steps", 1))
        return (loss, {"scores": grouped}) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Training logs also carry each part of the loss (``loss_<part>``), averaged as ``loss`` is."""
        if "loss" in logs:
            self.nan_guard.raise_if_pending()  # before a NaN is logged as a number
            logs.update(self.loss_parts.pop_means(self.accelerator.gather, self.state.global_step))
            if self.nan_guard.skipped_steps:
                logs["nan_skipped_steps"] = self.nan_guard.skipped_steps
        super().log(logs, *args, **kwargs)

    def prediction_step(
        self,
        model: PreTrainedModel,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Eval batches of single pairs (from `EvalPairs`): return (no loss, scores, pair indices).

        The Trainer gathers scores and indices across processes; `EvalPairs.compute_metrics` turns them into
        ranking metrics and the listwise loss over each query's candidates.
        """
        if "pair_index" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)  # private (no public hook): tests/test_trainer_hooks.py
        pair_index = inputs.pop("pair_index")
        inputs.pop("group_size", None)
        inputs.pop("teacher_scores", None)
        with torch.no_grad():
            scores = as_columns(model(**inputs))
        return None, scores.detach(), pair_index

    # a private Trainer method (no public hook), read against transformers 5.9-5.25: tests/test_trainer_hooks.py
    def _save_checkpoint(self, model: PreTrainedModel, trial: Any) -> None:
        """The Trainer's checkpoint, then its completion marker, and only then the rotation of older ones.

        Weights that went non-finite are never saved (the NaN guard raises first).
        """
        self.nan_guard.raise_if_pending()
        self.check_weights_finite()
        run_dir = Path(self._get_output_dir(trial=trial))
        folder = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if (
            self.args.should_save
        ):  # a resumed run rewrites this folder in place: its old marker no longer holds
            (folder / MARKER).unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # the Trainer would delete older checkpoints before ours is marked
        try:
            super()._save_checkpoint(model, trial)
            self.accelerator.wait_for_everyone()  # every process's files (RNG states, shards) are written
            if self.args.should_save:
                mark_complete(folder, self.state.global_step)
        except WRITE_ERRORS as error:  # a full disk, a quota: the half-written folder goes, older ones stay
            if not is_write_failure(error):
                raise
            if self.args.should_save:
                shutil.rmtree(folder, ignore_errors=True)
            raise CheckpointWriteError(write_failure_message(folder, error, run_dir)) from error
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            rotate_complete_checkpoints(run_dir, limit, keep=[folder, self.state.best_model_checkpoint])

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save as the Trainer does (the family model's `save_pretrained`, or peft's for an adapter and its
        heads), with `rerankforge.json` beside the weights.

        The Trainer's pickled ``training_args.bin`` is replaced by ``training_args.json``: a saved model
        holds no pickle, so loading it never runs code. It records ``run_settings`` (the run's data and mining
        settings) beside the arguments, so the model card and a reader see the whole recipe.
        """
        super().save_model(output_dir, _internal_call)
        if not self.args.should_save:
            return
        folder = Path(output_dir or self.args.output_dir)
        self.spec.save(folder)  # peft's save_pretrained does not know it
        record = {**self.args.to_dict(), **self.run_settings}  # the whole recipe, not only TrainingArguments
        atomic_write_text(folder / TRAINING_ARGS_JSON, json.dumps(record, indent=2, sort_keys=True))
        (folder / TRAINING_ARGS_NAME).unlink(missing_ok=True)

    def finish_saving(self, output_dir: str | Path) -> None:
        """After the final model is saved: a family's extra exports (the LLM family's merged model)."""


def as_columns(scores: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """Scores as one tensor: ``[rows]`` as they are; several heads' ``{name: [rows]}`` as ``[rows, heads]``, in
    the model's order (its `score_columns`)."""
    if isinstance(scores, dict):
        return torch.stack(list(scores.values()), dim=-1)
    return scores


def data_arguments(config: RerankerConfig, records, eval_pairs) -> dict[str, Any]:
    """The Trainer arguments every family passes alike: seeded training groups, eval pairs and their metrics."""

    seed = config.data_seed if config.data_seed is not None else config.seed
    return {
        "train_dataset": GroupedDataset(records, config.train_group_size, seed=seed),
        "eval_dataset": eval_pairs,
        "compute_metrics": eval_pairs.compute_metrics if eval_pairs is not None else None,
    }

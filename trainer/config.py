"""The thin shared base of every family's config: model, loss and run-safety fields on top of
`TrainingArguments`. The data (`DataArguments`) and the mining options (`MiningArguments`) are dataclasses of
their own, parsed from the same recipe (`run_config.RunConfig`), as trl splits its script, model and training
arguments.

Field names follow FlagEmbedding's reranker scripts where they exist, so their command lines carry over.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from transformers import TrainingArguments

from rerankforge.trainer.losses import (
    DEFAULT_LOSS,
    LOSSES,
    LayerwiseObjective,
    RankingObjective,
    build_objective,
)
from rerankforge.trainer.nan_guard import NAN_POLICIES, SKIP_UNDER_DEEPSPEED


@dataclass
class RerankerConfig(TrainingArguments):
    """How the model trains: its base, the group size and token budgets, the loss, and what a bad step does."""

    family: str = field(
        default="cross_encoder", metadata={"help": "Reranker family: the key in trainer.families."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base model: a local folder, a packaged model or a Hub name."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer, when not the model's own."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run code shipped with the model. Off unless you trust its source."}
    )
    train_group_size: int = field(default=8, metadata={"help": "Passages per query: 1 positive + negatives."})
    query_max_len: int = field(default=32, metadata={"help": "Tokens kept from each query."})
    passage_max_len: int = field(default=128, metadata={"help": "Tokens kept from each passage."})
    loss: str = field(
        default=DEFAULT_LOSS,
        metadata={
            "help": f"Training loss, by name: {', '.join(LOSSES)} (docs/losses.md says which does what)."
        },
    )
    loss_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "The loss's settings: a mapping in the recipe, JSON on the command line ('{\"k\": 10}')."
        },
    )
    distill_loss: str | None = field(
        default=None,
        metadata={
            "help": "A distillation term added to the loss, learning the teacher's pos_scores/neg_scores: "
            "kl, margin_mse or mse (default none; kl when knowledge_distillation is on)."
        },
    )
    knowledge_distillation: bool | None = field(
        default=None,
        metadata={
            "help": "FlagEmbedding's switch: true adds the distillation term (distill_loss, kl by default); "
            "unset follows distill_loss."
        },
    )
    distill_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Softmax temperature of the kl distillation term (and of layerwise self-distillation)."
        },
    )
    distill_weight: float = field(default=1.0, metadata={"help": "Weight of the distillation term."})
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Kept False: groups are not a `datasets` table the Trainer can prune."},
    )
    nan_policy: str = field(
        default="stop",
        metadata={
            "help": f"A non-finite loss or gradient norm: {' or '.join(NAN_POLICIES)} (stop: end the run there, "
            "saving nothing from the bad weights; skip: drop that step's update and go on)."
        },
    )
    nan_max_consecutive_skips: int = field(
        default=8,
        metadata={"help": "With nan_policy skip: stop after this many non-finite steps in a row."},
    )
    memory_check: bool = field(
        default=True,
        metadata={
            "help": "Before the first step, measure one step's peak memory on a probe batch and stop when it "
            "will not fit in what this machine has free."
        },
    )
    memory_limit_gb: float | None = field(
        default=None,
        metadata={
            "help": "The memory check's budget for all of this run's processes on one device, in GiB (default: "
            "what the device has free)."
        },
    )

    def __post_init__(self) -> None:
        self._parse_loss_kwargs()
        self._check_objective()
        super().__post_init__()
        self._check_inputs()
        self._check_grouped_training()
        self._check_nan_policy()

    def _parse_loss_kwargs(self) -> None:
        """Read a command line's JSON ``loss_kwargs`` into the mapping a recipe gives."""
        if isinstance(self.loss_kwargs, str):
            try:
                self.loss_kwargs = json.loads(self.loss_kwargs) if self.loss_kwargs.strip() else None
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"loss_kwargs must be a JSON object, got {self.loss_kwargs!r} ({error.msg})"
                ) from None
        if self.loss_kwargs is not None and not isinstance(self.loss_kwargs, dict):
            raise ValueError(f"loss_kwargs must be a mapping of setting to value, got {self.loss_kwargs!r}")

    def _check_objective(self) -> None:
        """Settle the distillation switches and build the objective once, before any data or model is read."""
        if self.knowledge_distillation is False and self.distill_loss is not None:
            raise ValueError(
                f"knowledge_distillation is false but distill_loss is {self.distill_loss!r}: set one of them"
            )
        if self.knowledge_distillation and self.distill_loss is None:
            self.distill_loss = "kl"
        self.knowledge_distillation = self.distill_loss is not None
        self.build_objective()  # an unknown loss, setting or value fails here, before any data or model is read
        if self.distill_weight != 1.0 and self.distill_loss is None:
            raise ValueError(
                f"distill_weight {self.distill_weight} would change nothing: no distill_loss is set (kl, margin_mse, mse)"
            )
        if self.distill_temperature != 1.0 and not self.uses_distill_temperature():
            raise ValueError(
                f"distill_temperature {self.distill_temperature} would change nothing: it is the temperature of the "
                "kl distillation term (and of the layerwise family's self-distillation), and this run has neither"
            )

    def _check_inputs(self) -> None:
        """A run needs a model."""
        if self.model_name_or_path is None:
            raise ValueError("model_name_or_path is required (in the recipe or as --model_name_or_path)")

    def _check_grouped_training(self) -> None:
        """The group size and token budgets, and the Trainer options that query groups rule out."""
        if self.train_group_size < 2:  # a softmax over one score is always 1: the loss would be 0
            raise ValueError(
                f"train_group_size must be >= 2 (1 positive + negatives), got {self.train_group_size}"
            )
        # items are query groups, not tokenized rows; ranking metrics need every query's whole candidate list
        by_length = self.train_sampling_strategy == "group_by_length"
        unsupported = {
            "train_sampling_strategy=group_by_length": by_length,
            "batch_eval_metrics": self.batch_eval_metrics,
            "eval_do_concat_batches": not self.eval_do_concat_batches,
        }
        for name, is_set in unsupported.items():
            if is_set:
                raise ValueError(
                    f"{name} is not supported by rerankforge's grouped training and ranking evaluation"
                )
        if self.query_max_len < 1 or self.passage_max_len < 1:
            raise ValueError("query_max_len and passage_max_len must be positive")

    def _check_nan_policy(self) -> None:
        """What a non-finite loss does, and whether this run's engine allows it."""
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {', '.join(NAN_POLICIES)}, got {self.nan_policy!r}")
        if self.nan_max_consecutive_skips < 1:
            raise ValueError(f"nan_max_consecutive_skips must be >= 1, got {self.nan_max_consecutive_skips}")
        if self.nan_policy == "skip" and self.deepspeed:
            raise ValueError(SKIP_UNDER_DEEPSPEED)

    def build_objective(self) -> RankingObjective | LayerwiseObjective:
        """The loss and distillation term this run trains with (a fresh module each call)."""
        return build_objective(
            self.loss, self.loss_kwargs, self.distill_loss, self.distill_weight, self.distill_temperature
        )

    def uses_distill_temperature(self) -> bool:
        """Whether a term of this run's objective reads ``distill_temperature``."""
        return self.distill_loss == "kl"

    @property
    def needs_teacher_scores(self) -> bool:
        """Whether every training record must carry pos_scores / neg_scores (checked before training)."""
        return self.build_objective().needs_teacher_scores

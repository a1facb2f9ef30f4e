"""The thin shared base of every family's config: model and data fields on top of `TrainingArguments`.

Field names follow FlagEmbedding's reranker scripts where they exist, so their command lines carry over.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from transformers import TrainingArguments

from rerankforge.data_tools.first_stage import RETRIEVERS
from rerankforge.data_tools.mining import MiningOptions
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
    """Everything one training run needs: one flat dataclass, set by a YAML recipe and the command line."""

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
    train_data: list[str] | None = field(
        default=None, metadata={"help": "JSONL file(s) or folder(s) of training queries.", "nargs": "+"}
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
    ir_data: str | None = field(
        default=None,
        metadata={
            "help": "A SQuAD JSON file, BEIR folder or (online) BEIR Hub name: split it by article or query, mine "
            "BM25 hard negatives from its training part (unless train_data is given) and evaluate on the rest."
        },
    )
    ir_split: str = field(default="test", metadata={"help": "qrels split of a BEIR ir_data folder."})
    eval_fraction: float = field(default=0.2, metadata={"help": "Share of articles (or queries) held out."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the train / held-out split."})
    ir_eval_split: str | None = field(
        default=None,
        metadata={
            "help": "A qrels split of the ir_data folder to evaluate on (e.g. test): training then uses all of "
            "ir_split (e.g. train) and nothing is held out at random."
        },
    )
    mine_num_negatives: int = field(default=15, metadata={"help": "Hard negatives mined per query."})
    mine_rank_range: list[int] = field(
        default_factory=lambda: [10, 100],
        metadata={
            "help": "First-stage ranks (first, last; 1 = best) that hard negatives come from.",
            "nargs": 2,
        },
    )
    mine_retriever: str = field(
        default="bm25", metadata={"help": "First stage of mining: bm25, dense or hybrid (their rank fusion)."}
    )
    mine_dense_model: str | None = field(
        default=None,
        metadata={"help": "Bi-encoder of the dense and hybrid retrievers (default all-MiniLM-L6-v2)."},
    )
    mine_sampling: str = field(
        default="random",
        metadata={"help": "random (seeded sample) or top (best-ranked) surviving candidates."},
    )
    mine_max_queries: int | None = field(
        default=None,
        metadata={"help": "Mine, and so train on, a seeded sample of this many training queries."},
    )
    mine_teacher: str | None = field(
        default=None, metadata={"help": "A reranker that rescores mined candidates for the margin filters."}
    )
    mine_absolute_margin: float | None = field(
        default=None, metadata={"help": "Drop a negative the teacher scores above p(positive) - this."}
    )
    mine_relative_margin: float | None = field(
        default=None, metadata={"help": "Drop a negative the teacher scores above p(positive) x (1 - this)."}
    )
    mine_max_score: float | None = field(
        default=None, metadata={"help": "Drop a negative the teacher scores above this probability."}
    )
    mine_margin_reference: str = field(
        default="max",
        metadata={"help": "With several positives, margins compare with their max, mean or min."},
    )
    mine_output_scores: bool = field(
        default=False,
        metadata={"help": "Keep the teacher's scores as pos_scores / neg_scores (distillation)."},
    )
    eval_data: str | None = field(
        default=None,
        metadata={"help": "A BEIR folder or SQuAD file to evaluate on (instead of ir_data's part)."},
    )
    eval_split: str = field(
        default="test", metadata={"help": "Split of eval_data (SQuAD: train, test or all)."}
    )
    eval_top_k: int = field(default=100, metadata={"help": "BM25 candidates reranked per evaluation query."})
    eval_max_queries: int | None = field(
        default=None, metadata={"help": "Evaluate on a seeded sample of this many queries (None: all)."}
    )
    evaluate_before_training: bool = field(
        default=True,
        metadata={
            "help": "With an evaluation set: also score with the untrained model (one more evaluation pass; "
            "the first stage's figures are always reported)."
        },
    )
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
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        self._parse_loss_kwargs()
        self._check_objective()
        super().__post_init__()
        self._check_inputs()
        self._check_mining()
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
        """A run needs a model and something to train on."""
        if self.model_name_or_path is None:
            raise ValueError("model_name_or_path is required (in the recipe or as --model_name_or_path)")
        if not self.train_data and not self.ir_data:
            raise ValueError("train_data or ir_data is required (in the recipe or on the command line)")

    def _check_mining(self) -> None:
        """The hard-negative mining settings, and the ir_data split they mine from."""
        if len(self.mine_rank_range) != 2 or not 1 <= self.mine_rank_range[0] <= self.mine_rank_range[1]:
            raise ValueError(
                f"mine_rank_range must be [first, last] with 1 <= first <= last, got {self.mine_rank_range}"
            )
        self.mining_options()  # a bad rank range, sampling or margin fails here
        if self.mine_retriever not in RETRIEVERS:
            raise ValueError(
                f"mine_retriever must be one of {', '.join(RETRIEVERS)}, got {self.mine_retriever!r}"
            )
        if self.mining_options().needs_teacher and not self.mine_teacher:
            raise ValueError(
                "mine_absolute_margin, mine_relative_margin, mine_max_score and mine_output_scores need mine_teacher"
            )
        if self.ir_eval_split and not self.ir_data:
            raise ValueError("ir_eval_split names a qrels split of ir_data, and no ir_data is set")

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

    def mining_options(self) -> MiningOptions:
        return MiningOptions(
            num_negatives=self.mine_num_negatives,
            rank_range=tuple(self.mine_rank_range),
            sampling=self.mine_sampling,
            seed=self.seed,
            absolute_margin=self.mine_absolute_margin,
            relative_margin=self.mine_relative_margin,
            max_score=self.mine_max_score,
            output_scores=self.mine_output_scores,
            margin_reference=self.mine_margin_reference,
        )

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

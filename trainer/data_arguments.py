"""What a run trains and evaluates on: training JSONL, or an IR collection to mine it from and hold queries out
of, and the evaluation set. A recipe's keys of these names land here; the run reads them and never rewrites
them (mined training data is a result of the run, `training_run.TrainingData`, not a changed setting)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rerankforge.inference.modeling.calibration import METHODS as CALIBRATION_METHODS
from rerankforge.inference.modeling.fusion import FUSION_METHODS


@dataclass
class DataArguments:
    """The training and evaluation data of one run."""

    train_data: list[str] | None = field(
        default=None,
        metadata={
            "help": "JSONL file(s) or folder(s) of training queries, or their names (docs/training.md).",
            "nargs": "+",
        },
    )
    ir_data: str | None = field(
        default=None,
        metadata={
            "help": "A SQuAD JSON file or BEIR folder, by path or name (squad-v1.1-dev, cisi, a URL#sha256=...), or "
            "a Hub id (rajpurkar/squad, BeIR/...): split it by article or query, mine hard negatives from its "
            "training part (unless train_data is given) and evaluate on the rest."
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
    eval_data: str | None = field(
        default=None,
        metadata={
            "help": "A BEIR folder or SQuAD file (path or name) to evaluate on (instead of ir_data's part)."
        },
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

    calibration: str = field(
        default="platt",
        metadata={
            "help": "With an evaluation set: after training, fit a calibration of the score (platt: temperature "
            "and bias; isotonic; none) on a share of the evaluation queries, measure it on the others, and store "
            "it with the model (normalize=True then gives calibrated probabilities)."
        },
    )
    calibration_fraction: float = field(
        default=0.5,
        metadata={
            "help": "Share of the evaluation queries the calibration is fitted on and the fusion chosen on."
        },
    )
    fusion: str = field(
        default="interpolation",
        metadata={
            "help": "With an evaluation set: after training, choose the weight that fuses the reranker with the "
            "first stage (interpolation, rrf; none) on the calibration's share of the evaluation queries, report "
            "the fused ranking on the others, and store it with the model."
        },
    )

    def __post_init__(self) -> None:
        if self.calibration not in (*CALIBRATION_METHODS, "none"):
            raise ValueError(
                f"calibration must be one of {', '.join((*CALIBRATION_METHODS, 'none'))}, got {self.calibration!r}"
            )
        if self.fusion not in (*FUSION_METHODS, "none"):
            raise ValueError(
                f"fusion must be one of {', '.join((*FUSION_METHODS, 'none'))}, got {self.fusion!r}"
            )
        if not 0 < self.calibration_fraction < 1:
            raise ValueError(
                f"calibration_fraction must lie between 0 and 1, got {self.calibration_fraction}"
            )
        if isinstance(self.train_data, str):  # one path, as a Python caller writes it
            self.train_data = [self.train_data]
        if not self.train_data and not self.ir_data:
            raise ValueError("train_data or ir_data is required (in the recipe or on the command line)")
        if self.ir_eval_split and not self.ir_data:
            raise ValueError("ir_eval_split names a qrels split of ir_data, and no ir_data is set")
        if self.eval_top_k < 1:
            raise ValueError(f"eval_top_k must be at least 1, got {self.eval_top_k}")

    @property
    def mines(self) -> bool:
        """Whether the run mines its training data from ``ir_data`` (no ``train_data`` given)."""
        return not self.train_data

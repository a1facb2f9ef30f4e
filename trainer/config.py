"""The thin shared base of every family's config: model and data fields on top of `TrainingArguments`.

Field names follow FlagEmbedding's reranker scripts where they exist, so their command lines carry over.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


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
    knowledge_distillation: bool = field(
        default=False,
        metadata={"help": "Also learn the teacher's pos_scores/neg_scores (KL over the group)."},
    )
    distill_temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature for distillation."}
    )
    distill_weight: float = field(default=1.0, metadata={"help": "Weight of the distillation term."})
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Kept False: groups are not a `datasets` table the Trainer can prune."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        super().__post_init__()
        if self.model_name_or_path is None:
            raise ValueError("model_name_or_path is required (in the recipe or as --model_name_or_path)")
        if not self.train_data:
            raise ValueError("train_data is required (in the recipe or as --train_data)")
        if self.train_group_size < 1:
            raise ValueError(f"train_group_size must be >= 1, got {self.train_group_size}")
        if self.query_max_len < 1 or self.passage_max_len < 1:
            raise ValueError("query_max_len and passage_max_len must be positive")

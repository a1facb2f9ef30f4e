"""LLM reranker settings: prompt and "Yes" scoring, LoRA, precision and attention (FlagEmbedding's names)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rerankforge.inference.modeling.activation_checkpointing import (
    RENAMED,
    checkpointing_kwargs,
    checkpointing_on,
    set_checkpointing_kwargs,
)
from rerankforge.inference.modeling.llm import ATTENTION_IMPLEMENTATIONS, SCORE_MODES
from rerankforge.inference.modeling.llm_formats import DEFAULTS, INPUT_FORMATS, QWEN3, check_format
from rerankforge.inference.modeling.precision import DTYPES
from rerankforge.trainer.config import RerankerConfig


@dataclass
class LLMRerankerConfig(RerankerConfig):
    """A decoder LLM scored by its "Yes" logit after ``A: {query}\\nB: {passage}\\n{prompt}``, trained with LoRA."""

    family: str = field(default="llm", metadata={"help": "Reranker family (fixed: llm)."})
    passage_max_len: int = field(default=192, metadata={"help": "Tokens kept from each passage."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate."})
    # FlagEmbedding's LLM reranker recipes (bge-reranker-v2-gemma, -minicpm-layerwise): one query per device per
    # micro-batch, 16 accumulated, gradient checkpointing on. A decoder's activations for 8 queries x 8 passages
    # do not fit a 24 GB machine (SmolLM2-135M on CPU: ~49 GiB per process, measured by the memory check)
    per_device_train_batch_size: int = field(
        default=1,
        metadata={"help": "Queries per device in one micro-batch (each with train_group_size passages)."},
    )
    gradient_accumulation_steps: int = field(
        default=16, metadata={"help": "Micro-batches accumulated into one optimizer step."}
    )
    activation_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Recompute each layer's activations in the backward pass instead of keeping them "
            "(default for this family: true, unless gradient_checkpointing says otherwise)."
        },
    )
    # unset by default here too (transformers up to 5.17 defaults it to False), so "neither was given" is seen
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "The older name of activation_checkpointing (what transformers up to 5.17 reads)."},
    )
    input_format: str = field(
        default="bge",
        metadata={
            "help": f"Input layout: {', '.join(INPUT_FORMATS)} (bge: A: {{query}}\\nB: {{passage}}\\n{{prompt}}; "
            "qwen3: Qwen3-Reranker's chat layout; chat: the tokenizer's own chat template)."
        },
    )
    prompt: str | None = field(
        default=None,
        metadata={
            "help": "Prompt after the pair (bge) or the instruction in the user turn (qwen3, chat); a record's "
            "own `prompt` overrides it (default: the format's own)."
        },
    )
    score: str | None = field(
        default=None,
        metadata={
            "help": f"Score mode: {' or '.join(SCORE_MODES)} (log-odds against 'No'; default: yes for bge, "
            "yes_minus_no for qwen3 and chat)."
        },
    )
    yes_token: str | None = field(
        default=None,
        metadata={"help": "Answer word whose logit is the score (default: Yes for bge, else yes)."},
    )
    no_token: str | None = field(
        default=None,
        metadata={"help": "Answer word subtracted by score: yes_minus_no (default: No for bge, else no)."},
    )
    use_lora: bool = field(default=True, metadata={"help": "Train LoRA adapters (False: every weight)."})
    lora_rank: int = field(default=32, metadata={"help": "LoRA rank r."})
    lora_alpha: float = field(default=64.0, metadata={"help": "LoRA alpha (scale alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules that get adapters (default: attention and MLP projections).",
            "nargs": "+",
        },
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter.", "nargs": "+"}
    )
    adapter_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved adapter to continue training from (on model_name_or_path)."}
    )
    torch_dtype: str = field(
        default="float32", metadata={"help": f"Weights' precision: {', '.join(DTYPES)}."}
    )
    attn_implementation: str = field(
        default="auto",
        metadata={
            "help": f"Attention kernel: {', '.join(ATTENTION_IMPLEMENTATIONS)} (auto: sdpa where supported)."
        },
    )
    merge_lora: bool = field(
        default=False,
        metadata={"help": "Also write <output_dir>/merged: a full model that loads without peft."},
    )

    def __post_init__(self) -> None:
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            # on by default; not a field default, or transformers would ignore gradient_checkpointing (its alias)
            self.activation_checkpointing = True
        if not RENAMED:
            # this transformers reads only gradient_checkpointing: activation_checkpointing (ours here) feeds it
            given = self.activation_checkpointing
            self.activation_checkpointing = self.gradient_checkpointing = bool(
                self.gradient_checkpointing if given is None else given
            )
        super().__post_init__()
        self.resolve_format_defaults()
        if self.score not in SCORE_MODES:
            raise ValueError(f"score must be one of {', '.join(SCORE_MODES)}, got {self.score!r}")
        if self.torch_dtype not in DTYPES:
            raise ValueError(f"torch_dtype must be one of {', '.join(DTYPES)}, got {self.torch_dtype!r}")
        if self.attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation must be one of {', '.join(ATTENTION_IMPLEMENTATIONS)}, "
                f"got {self.attn_implementation!r}"
            )
        if self.adapter_name_or_path and not self.use_lora:
            raise ValueError("adapter_name_or_path continues a LoRA run: it needs use_lora: true")
        if self.merge_lora and not self.use_lora:
            raise ValueError("merge_lora needs use_lora: true (without LoRA the saved model is already full)")
        if checkpointing_on(self) and not checkpointing_kwargs(self):
            # reentrant checkpointing passes no gradient through frozen embeddings to the adapters
            set_checkpointing_kwargs(self, {"use_reentrant": False})

    def resolve_format_defaults(self) -> None:
        """Unset prompt, score and answer words take the input format's own; qwen3 fixes its answer words."""
        check_format(self.input_format)
        defaults = DEFAULTS[self.input_format]
        if self.input_format == QWEN3:
            asked = {"score": self.score, "yes_token": self.yes_token, "no_token": self.no_token}
            fixed = {"score": defaults.score, "yes_token": defaults.yes_token, "no_token": defaults.no_token}
            wrong = [f"{k}: {v!r}" for k, v in asked.items() if v is not None and v != fixed[k]]
            if wrong:
                raise ValueError(
                    f"input_format qwen3 scores the log-odds of 'yes' against 'no' ({', '.join(wrong)} given): "
                    "leave score, yes_token and no_token unset, or use input_format chat"
                )
        self.prompt = self.prompt if self.prompt is not None else defaults.prompt
        self.score = self.score or defaults.score
        self.yes_token = self.yes_token or defaults.yes_token
        self.no_token = self.no_token or defaults.no_token

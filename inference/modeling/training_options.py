"""What a model class reads from a training config, declared here so that the model layer names no trainer class.

The trainer's configs (trainer/cross_encoder_config.py, llm_config.py, layerwise_config.py) satisfy these
protocols; anything with the same attributes (a test's namespace, another trainer) does too.
"""

from __future__ import annotations

from typing import Protocol


class EncoderTrainingOptions(Protocol):
    model_name_or_path: str | None
    tokenizer_name: str | None
    trust_remote_code: bool
    query_max_len: int
    passage_max_len: int
    attention_dropout: float | None

    @property
    def scoring_passage_max_len(self) -> int: ...

    @property
    def forward_chunks(self) -> int: ...


class LLMTrainingOptions(Protocol):
    model_name_or_path: str | None
    tokenizer_name: str | None
    trust_remote_code: bool
    query_max_len: int
    passage_max_len: int
    torch_dtype: str
    attn_implementation: str
    input_format: str
    prompt: str | None
    score: str | None
    yes_token: str | None
    no_token: str | None
    use_lora: bool
    adapter_name_or_path: str | None
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    lora_target_modules: list[str] | None
    modules_to_save: list[str] | None


class LayerwiseTrainingOptions(LLMTrainingOptions, Protocol):
    start_layer: int
    train_layers: list[int] | None

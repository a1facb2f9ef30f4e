"""The model object every family shares: a transformers backbone, the family's heads, its spec, and a forward
pass that returns scores.

Why it is built this way:

- The backbone's own modules are registered as this module's children under their own names (the backbone object
  itself is kept as a plain attribute). The state dict is therefore the backbone's, key for key, plus the family's
  heads: a saved cross-encoder is a plain transformers folder that sentence-transformers and FlagEmbedding load,
  and a LoRA adapter (peft wraps this object) has exactly the keys it would have on the bare causal LM.
- It is a `PreTrainedModel`, so the Trainer saves it through `save_pretrained` and resumes it through
  `load_state_dict` with no override of the Trainer's private methods. With LoRA, peft's `PeftModel` wraps it and
  the Trainer saves and resumes the adapter (and the heads, as peft's `modules_to_save`) the way it does for any
  peft model.
- ``forward`` is the score, so DDP and DeepSpeed see an ordinary forward pass.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from rerankforge.inference.modeling.activation_checkpointing import enable_checkpointing
from rerankforge.inference.modeling.spec import RerankerSpec


class RerankerModel(PreTrainedModel):
    """Base of the family models: ``model(**batch)`` is one float32 score per row (or per row and head)."""

    config_class = PretrainedConfig
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    # the backbone's own attention settings apply; these only keep PreTrainedModel's checks from overriding them
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    spec_class: ClassVar[type[RerankerSpec]]
    head_prefix: ClassVar[str | None] = None  # state-dict prefix of the family's own heads, if it has any

    def __init__(self, backbone: PreTrainedModel, spec: RerankerSpec):
        # a copy: PreTrainedModel's attention checks must not rewrite the backbone's live config (or a sub-config)
        super().__init__(copy.deepcopy(backbone.config))
        self.config = backbone.config
        if list(backbone.parameters(recurse=False)) or list(backbone.buffers(recurse=False)):
            raise ValueError(f"{type(backbone).__name__} keeps weights outside its modules: not supported")
        for name, child in backbone.named_children():
            self.add_module(name, child)
        self.__dict__["backbone"] = backbone  # not a submodule: its modules are already ours
        self.training = backbone.training  # transformers loads models in eval mode; so is this one then
        self.name_or_path = backbone.name_or_path
        self.spec = spec

    def __setattr__(self, name: str, value: Any) -> None:
        """A module that replaces one of the backbone's children (peft wrapping ``lm_head``, say) replaces it in the
        backbone too, since the backbone's forward is what runs."""
        super().__setattr__(name, value)
        backbone = self.__dict__.get("backbone")
        if backbone is not None and isinstance(value, nn.Module) and name in backbone._modules:
            setattr(backbone, name, value)

    # the backbone is not a registered submodule, so what nn.Module would propagate to it is passed on here
    def train(self, mode: bool = True) -> RerankerModel:
        super().train(mode)
        self.backbone.train(mode)
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def tie_weights(self, *args: Any, **kwargs: Any) -> Any:
        return self.backbone.tie_weights(*args, **kwargs)

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict[str, Any] | None = None, **options: Any
    ) -> None:
        """For `Trainer(activation_checkpointing=True)` (transformers after 5.17): the backbone checkpoints its
        layers."""
        enable_checkpointing(self.backbone, {**(activation_checkpointing_kwargs or {}), **options})

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, **options: Any
    ) -> None:
        """The same for transformers up to 5.17, whose Trainer calls this name."""
        enable_checkpointing(self.backbone, {**(gradient_checkpointing_kwargs or {}), **options})

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The scores of a collated batch (the model inputs it holds; group and index fields are ignored)."""
        return self(**{k: v for k, v in batch.items() if k in self.input_names()})

    @classmethod
    def input_names(cls) -> tuple[str, ...]:
        return ("input_ids", "attention_mask")

    def score_columns(self) -> list[str] | None:
        """Names of the score columns evaluation reports apart (None: one score per row)."""
        return None

    def head_state(self, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The family's own head tensors (keys under ``head_prefix``) of ``state_dict`` or of the live model."""
        if self.head_prefix is None:
            return {}
        state = state_dict if state_dict is not None else self.state_dict()
        return {k: v for k, v in state.items() if k.startswith(self.head_prefix)}

    def save_pretrained(
        self,
        save_directory: str | Path,
        state_dict: dict[str, torch.Tensor] | None = None,
        is_main_process: bool = True,
        **kwargs: Any,
    ) -> None:
        """The backbone's folder (its config, safetensors weights and the heads among them) plus `rerankforge.json`.

        ``state_dict`` is the Trainer's (gathered under DeepSpeed ZeRO-3); its keys are the backbone's plus heads.
        """
        self.backbone.save_pretrained(
            save_directory,
            state_dict=state_dict if state_dict is not None else self.state_dict(),
            is_main_process=is_main_process,
            **kwargs,
        )
        if is_main_process:
            self.spec.save(save_directory)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REPORT_ROW = re.compile(r"^\s*(.+?)\s*\|\s*([A-Z_]+)\s*\|")


class _OwnKeysOnly(logging.Filter):
    """Drops transformers' load report when all it lists are unexpected keys under ``prefix``: a family's heads,
    saved among the backbone's weights, which the family model loads itself."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        message = _ANSI.sub("", record.getMessage())  # a terminal gets the report in colour
        if "LOAD REPORT" not in message:
            return True
        rows = [
            m.groups() for line in message.splitlines() if (m := _REPORT_ROW.match(line)) and m[1] != "Key"
        ]
        return not rows or not all(
            key.startswith(self.prefix) and status == "UNEXPECTED" for key, status in rows
        )


@contextlib.contextmanager
def quiet_about(prefix: str | None) -> Iterator[None]:
    """While loading a backbone from a family's full folder: no report about the family's own head keys."""
    if prefix is None:
        yield
        return
    log = logging.getLogger("transformers.modeling_utils")
    only = _OwnKeysOnly(prefix)
    log.addFilter(only)
    try:
        yield
    finally:
        log.removeFilter(only)

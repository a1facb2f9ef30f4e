"""Activation checkpointing under every transformers 5 release: one reading of the settings, one way to switch it on.

transformers up to 5.17 (read against 5.0.0 and 5.17.0) names the TrainingArguments fields
``gradient_checkpointing`` / ``gradient_checkpointing_kwargs``, the model method ``gradient_checkpointing_enable``
and the property ``is_gradient_checkpointing``. Later releases (read against 5.25.0) renamed them
``activation_checkpointing*`` and keep the old names as deprecated aliases until v6. rerankforge reads whichever
names the installed transformers has, so its configs, recipes and models run on both sides of the rename.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import TrainingArguments

#: True when this transformers has the ``activation_checkpointing*`` names (after 5.17).
RENAMED = "activation_checkpointing" in {f.name for f in dataclasses.fields(TrainingArguments)}


def flag_name(renamed: bool = RENAMED) -> str:
    """The TrainingArguments field the Trainer reads to switch checkpointing on."""
    return "activation_checkpointing" if renamed else "gradient_checkpointing"


def kwargs_name(renamed: bool = RENAMED) -> str:
    """The TrainingArguments field the Trainer passes on to the model's enable method."""
    return flag_name(renamed) + "_kwargs"


def checkpointing_on(args: Any, renamed: bool = RENAMED) -> bool:
    """Whether the Trainer will checkpoint activations with these arguments."""
    return bool(getattr(args, flag_name(renamed), False))


def checkpointing_kwargs(args: Any, renamed: bool = RENAMED) -> dict[str, Any]:
    """The keyword arguments the Trainer will pass when it switches checkpointing on (a copy; {} when unset)."""
    value = getattr(args, kwargs_name(renamed), None)
    return dict(value) if isinstance(value, dict) else {}


def set_checkpointing_kwargs(args: Any, kwargs: dict[str, Any]) -> None:
    """Set the kwargs under every name this transformers reads (the new one and its deprecated alias)."""
    for name in ("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs"):
        if hasattr(args, name):
            setattr(args, name, dict(kwargs))


def enable_checkpointing(model: Any, kwargs: dict[str, Any]) -> None:
    """Switch checkpointing on as ``Trainer.train`` does: ``every_n_layers`` and ``offload`` are the enable
    method's own options, the rest goes to ``torch.utils.checkpoint``."""
    kwargs = dict(kwargs)
    options = {key: kwargs.pop(key) for key in ("every_n_layers", "offload") if key in kwargs}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs or None, **options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs or None, **options)


def is_checkpointing(model: Any) -> bool:
    """Whether the model's layers checkpoint their activations now."""
    return bool(model.is_activation_checkpointing if RENAMED else model.is_gradient_checkpointing)

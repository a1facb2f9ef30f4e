"""Activation checkpointing on both sides of transformers' rename (5.17 and before: gradient_checkpointing*; later:
activation_checkpointing*). `make test` runs this on the newer names; `make test-device-stack` (transformers 5.17)
and `make test-floors` (5.0) on the older, so each branch runs for real somewhere. The cross-encoder's own
checks, which need none of this module's names, are in test_cross_encoder_training.py."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainingArguments

from rerankforge.inference.modeling.activation_checkpointing import (
    RENAMED,
    checkpointing_kwargs,
    checkpointing_on,
    flag_name,
    is_checkpointing,
    kwargs_name,
    set_checkpointing_kwargs,
)


def test_the_names_read_are_the_ones_this_transformers_has():
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert flag_name() in fields and kwargs_name() in fields
    assert ("activation_checkpointing" in fields) == RENAMED


@pytest.mark.parametrize("renamed", [True, False], ids=["after-5.17", "up-to-5.17"])
def test_settings_are_read_under_either_name(renamed):
    old = SimpleNamespace(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})
    new = SimpleNamespace(
        activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": True}
    )
    args = new if renamed else old
    assert checkpointing_on(args, renamed) and checkpointing_kwargs(args, renamed) == {"use_reentrant": True}
    other = old if renamed else new
    assert not checkpointing_on(other, renamed) and checkpointing_kwargs(other, renamed) == {}
    both = SimpleNamespace(**vars(old), **vars(new))
    set_checkpointing_kwargs(both, {"use_reentrant": False})
    assert (
        both.gradient_checkpointing_kwargs == both.activation_checkpointing_kwargs == {"use_reentrant": False}
    )


@pytest.mark.parametrize("method", ["activation_checkpointing_enable", "gradient_checkpointing_enable"])
def test_the_family_model_passes_either_enable_call_to_its_backbone(tiny_bert_dir, method, checkpoint_calls):
    """transformers up to 5.17 calls gradient_checkpointing_enable, later releases activation_checkpointing_enable:
    either way the backbone's layers run through checkpoint in training, with the kwargs given."""
    from rerankforge.inference import Reranker

    calls = checkpoint_calls
    model = Reranker.from_pretrained(str(tiny_bert_dir), backend="torch").model
    assert not is_checkpointing(model.backbone)
    getattr(model, method)(**{f"{method.split('_enable')[0]}_kwargs": {"use_reentrant": False}})
    assert is_checkpointing(model.backbone)
    model.train()
    ids = torch.tensor([[101, 2054, 102, 2003, 102]])
    model(input_ids=ids, attention_mask=torch.ones_like(ids)).sum().backward()
    assert len(calls) == 2 and all(k == {"use_reentrant": False} for k in calls)  # the tiny BERT's 2 layers

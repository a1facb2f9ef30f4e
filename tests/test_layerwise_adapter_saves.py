"""The layerwise heads' frozen biases in an adapter's saves when the caller's state dict leaves them out, as the
Trainer's gather under DeepSpeed ZeRO-3 does for a peft model (`exclude_frozen_parameters=True`).

The ZeRO-3 run itself is tests/test_deepspeed.py (slow); here the same state dict is handed to peft directly.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_decoder
from safetensors.torch import load_file

from rerankforge.inference.modeling.layerwise import LayerwiseRerankerModel, decoder_layers
from rerankforge.inference.modeling.lora import add_lora
from rerankforge.inference.modeling.spec import LayerwiseSpec

HEADS = [f"base_model.model.heads.{k}.{n}" for k in (1, 2) for n in ("bias", "weight")]


def adapter_on_heads(llm_tokenizer, bias: float = 0.0):
    lm = tiny_decoder("llama", len(llm_tokenizer), num_layers=2)
    spec = LayerwiseSpec(query_max_len=16, passage_max_len=32, max_length=48, yes_token_id=5, layers=[1, 2],
                         num_layers=len(decoder_layers(lm)))  # fmt: skip
    model = LayerwiseRerankerModel(lm, spec)
    wrapped = add_lora(model, rank=2, alpha=4, dropout=0.0)
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "modules_to_save" in name and name.endswith(".bias"):
                parameter.fill_(bias)  # an older adapter's trained bias, to tell its value from a zero
    model.freeze_fixed_parameters(wrapped)
    return wrapped


def trainable_state(wrapped) -> dict[str, torch.Tensor]:
    """What DeepSpeed's `_zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)` returns."""
    return {n: p.detach().clone() for n, p in wrapped.named_parameters() if p.requires_grad}


def saved_heads(folder) -> dict[str, torch.Tensor]:
    adapter = load_file(folder / "adapter_model.safetensors")
    return {k: v for k, v in adapter.items() if ".heads." in k}


@pytest.mark.parametrize("bias", [0.0, 0.25])
def test_an_adapter_saved_from_the_trainable_weights_alone_holds_the_frozen_head_biases(
    tmp_path, llm_tokenizer, bias
):
    wrapped = adapter_on_heads(llm_tokenizer, bias)
    frozen = [n for n, p in wrapped.named_parameters() if ".heads." in n and not p.requires_grad]
    assert frozen and all(n.endswith(".bias") or ".original_module." in n for n in frozen)
    state = trainable_state(wrapped)
    assert not any(k.endswith("modules_to_save.default.bias") for k in state)  # what peft could not find
    wrapped.save_pretrained(str(tmp_path), state_dict=state)
    heads = saved_heads(tmp_path)
    assert sorted(heads) == HEADS
    for k in (1, 2):
        assert torch.equal(heads[f"base_model.model.heads.{k}.bias"], torch.full((1,), bias))
        live = state[f"base_model.model.heads.{k}.modules_to_save.default.weight"]
        assert torch.equal(heads[f"base_model.model.heads.{k}.weight"], live)


def test_a_zero3_shard_of_a_frozen_bias_is_saved_from_its_value_before_training_in_its_dtype(
    tmp_path, llm_tokenizer
):
    wrapped = adapter_on_heads(llm_tokenizer, bias=0.25)
    state = trainable_state(wrapped)
    for name, parameter in wrapped.named_parameters():  # as DeepSpeed ZeRO-3 leaves them between gathers
        if name.endswith("modules_to_save.default.bias"):
            parameter.ds_id = len(name)
            parameter.data = torch.empty(0, dtype=torch.bfloat16)
    wrapped.save_pretrained(str(tmp_path), state_dict=state)
    heads = saved_heads(tmp_path)
    assert sorted(heads) == HEADS
    for k in (1, 2):
        assert torch.equal(
            heads[f"base_model.model.heads.{k}.bias"], torch.full((1,), 0.25, dtype=torch.bfloat16)
        )


def test_a_state_dict_that_holds_the_biases_is_saved_as_it_is(tmp_path, llm_tokenizer):
    """ZeRO-2 and plain runs hand peft every weight: nothing is replaced."""
    wrapped = adapter_on_heads(llm_tokenizer)
    state = {k: v.clone() for k, v in wrapped.state_dict().items()}
    key = "base_model.model.heads.1.modules_to_save.default.bias"
    state[key] = torch.full((1,), 0.5)
    wrapped.save_pretrained(str(tmp_path), state_dict=state)
    assert torch.equal(saved_heads(tmp_path)["base_model.model.heads.1.bias"], torch.full((1,), 0.5))
    wrapped.save_pretrained(str(tmp_path / "plain"))  # no state dict: peft's own, as before
    assert sorted(saved_heads(tmp_path / "plain")) == HEADS

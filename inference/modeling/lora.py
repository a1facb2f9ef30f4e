"""LoRA through peft: which modules get adapters, adding them, continuing from a saved adapter, merging.

An adapter folder (``adapter_config.json``) names its base model; rerankforge also records the base in
`rerankforge.json`, so an adapter trained here loads back onto the same weights.

peft is the [train] extra's, not the core's: merged and plain folders score without it, and what needs it
(`require_peft`) says which extra to install.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

ADAPTER_CONFIG = "adapter_config.json"
# the attention and MLP projections of Llama, Qwen2, Gemma/Gemma2/Gemma3, Mistral and MiniCPM
PROJECTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
INSTALL_PEFT = 'pip install "rerankforge[train]"'


def require_peft(why: str) -> None:
    """Nothing when peft is installed; else an ImportError that says what needs it and which extra brings it."""
    if importlib.util.find_spec("peft") is None:
        raise ImportError(f"{why} needs peft, which a scoring-only install leaves out: {INSTALL_PEFT}")


def default_target_modules(model: nn.Module) -> list[str]:
    """The attention and MLP projection names this architecture has, or an error asking for them."""
    found = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in PROJECTION_NAMES
    }
    if not found:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ValueError(
            f"no attention/MLP projections named {', '.join(PROJECTION_NAMES)} in this {model_type} model: "
            "set lora_target_modules"
        )
    return [name for name in PROJECTION_NAMES if name in found]


def is_adapter_folder(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base_model(path: str | Path) -> str | None:
    """The base model an adapter folder was trained on, as peft recorded it."""
    config = json.loads((Path(path) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    return config.get("base_model_name_or_path")


def trainable_heads(model: nn.Module) -> list[str]:
    """The family's own head modules that train with the adapter (peft's ``modules_to_save``)."""
    names = getattr(model, "head_module_names", None)
    return names() if callable(names) else []


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: list[str] | None = None,
    modules_to_save: list[str] | None = None,
):
    """Fresh LoRA adapters on a family model; only they, its heads and ``modules_to_save`` train.

    No task type: peft wraps the family model as it is, so its forward (the score) is what the wrapper runs.
    """
    require_peft("adding LoRA adapters")
    from peft import LoraConfig, get_peft_model  # optional: the [train] extra (require_peft says so)

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules or default_target_modules(model),
        modules_to_save=[*(modules_to_save or []), *trainable_heads(model)] or None,
    )
    return get_peft_model(model, config)


def load_adapter(model: nn.Module, adapter_path: str | Path, trainable: bool):
    """A saved adapter on a family model: trainable to continue training, frozen to score (then merged).

    Adapters saved before the family models (task type CAUSAL_LM, heads in a file of their own) load the same
    way: their keys are those of the bare causal LM, which the family model shares. To continue training, heads
    the adapter does not hold yet (a version-1 adapter's, loaded from their file before this) join its
    ``modules_to_save``, so they train and are saved with it from now on.
    """
    require_peft(f"loading the adapter in {adapter_path}")
    # optional: the [train] extra (require_peft says so); merged and plain folders score without it
    from peft import LoraConfig, PeftModel
    from peft.tuners.tuners_utils import BaseTuner
    from peft.utils.other import set_additional_trainable_modules

    config = LoraConfig.from_pretrained(str(adapter_path))
    config.task_type = None
    config.inference_mode = not trainable
    wrapped = PeftModel.from_pretrained(model, str(adapter_path), config=config, is_trainable=trainable)
    held = set(config.modules_to_save or [])
    missing = [name for name in trainable_heads(model) if name not in held] if trainable else []
    if missing:
        config.modules_to_save = sorted(held | set(missing))
        extra = dataclasses.replace(config, modules_to_save=missing)
        set_additional_trainable_modules(
            wrapped.base_model, extra, BaseTuner.get_model_config(wrapped), "default"
        )
    return wrapped


def save_fixed_tensors_with_adapter(wrapped: nn.Module, fixed: dict[str, torch.Tensor]) -> None:
    """Frozen tensors of a peft model (``fixed``: its state-dict keys and values) go into each of its saves, also
    when the caller hands peft a state dict that leaves them out.

    Under DeepSpeed ZeRO-3 the Trainer gathers a peft model's weights for saving with DeepSpeed's
    ``_zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)``, which skips every parameter that
    does not require grad: a frozen parameter of peft's ``modules_to_save`` copies too, which peft's
    ``get_peft_model_state_dict`` then looks for in vain (``KeyError: 'modules_to_save.default.bias'``). Only the
    main process saves, so nothing can be gathered then; a frozen parameter gets no gradient and no optimizer
    state, so its value taken before training (``fixed``) is the one it still has. A key the state dict holds is
    kept as it is; a missing one comes from the live parameter when that is whole (no ZeRO-3 shard), otherwise
    from ``fixed``, in the live parameter's dtype (the 16-bit one DeepSpeed gathers in).
    """
    if not fixed or not hasattr(wrapped, "peft_config"):  # a full model's save holds its frozen weights
        return
    fixed = {key: value.detach().to("cpu", copy=True) for key, value in fixed.items()}
    save = wrapped.save_pretrained

    def save_pretrained(save_directory, *args, **kwargs):
        state_dict = kwargs.get("state_dict")
        if state_dict is not None and any(key not in state_dict for key in fixed):
            live = dict(wrapped.named_parameters())
            completed = dict(state_dict)
            for key, value in fixed.items():
                parameter = live.get(key)
                if key in completed or parameter is None:
                    continue
                whole = not hasattr(parameter, "ds_id")  # DeepSpeed ZeRO-3 marks its (sharded) parameters
                source = parameter.detach().cpu() if whole else value
                completed[key] = source.to(parameter.dtype, copy=True)
            kwargs["state_dict"] = completed
        return save(save_directory, *args, **kwargs)

    wrapped.save_pretrained = save_pretrained


def load_plain_adapter(model: PreTrainedModel, adapter_path: str | Path):
    """A peft adapter that rerankforge did not write, on the model it was made for, frozen."""
    require_peft(f"loading the adapter in {adapter_path}")
    from peft import PeftModel  # optional: the [train] extra; merged and plain folders score without peft

    return PeftModel.from_pretrained(model, str(adapter_path), is_trainable=False)


def unwrap_adapters(model: nn.Module) -> nn.Module:
    """The family model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def merged_copy(model) -> PreTrainedModel:
    """The adapter folded into the base weights: a plain model that needs no peft to load."""
    return model.merge_and_unload()

"""Fold a saved LoRA adapter into its base model: a full safetensors folder that loads with no peft installed."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from rerankforge.inference.modeling.families import get_family
from rerankforge.inference.modeling.files import atomic_folder
from rerankforge.inference.modeling.llm import load_causal_lm
from rerankforge.inference.modeling.lora import (
    adapter_base_model,
    is_adapter_folder,
    load_plain_adapter,
    merged_copy,
)
from rerankforge.inference.modeling.spec import RerankerSpec


def merge_adapter_folder(
    adapter_dir: str | Path,
    out_dir: str | Path,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
) -> Path:
    """Base + adapter merged in ``dtype`` and written to ``out_dir`` (complete or not at all)."""
    with atomic_folder(out_dir) as staging:
        write_merged(adapter_dir, staging, dtype, trust_remote_code)
    return Path(out_dir)


def write_merged(
    adapter_dir: str | Path, folder: Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False
) -> None:
    """The merged model (with its heads), tokenizer and spec (``adapter: false``), written into ``folder``.

    A folder rerankforge wrote merges through its family's model object, so the heads come along; a plain peft
    adapter on a causal LM merges onto that LM.
    """
    adapter_dir = Path(adapter_dir)
    if not is_adapter_folder(adapter_dir):
        raise ValueError(f"{adapter_dir} holds no LoRA adapter (no adapter_config.json)")
    spec = RerankerSpec.load(adapter_dir)
    if spec is not None:
        model = get_family(spec.family).model_class.from_pretrained(
            adapter_dir, dtype, trust_remote_code=trust_remote_code
        )
    else:
        base = adapter_base_model(adapter_dir)
        if base is None:
            raise ValueError(f"{adapter_dir}: no base model recorded in adapter_config.json")
        base_model = load_causal_lm(base, dtype, trust_remote_code=trust_remote_code)
        model = merged_copy(load_plain_adapter(base_model, adapter_dir))
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=trust_remote_code)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

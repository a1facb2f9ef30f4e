"""Fold a saved LoRA adapter into its base model: a full safetensors folder that loads with no peft installed."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer

from rerankforge.data_tools.files import atomic_folder
from rerankforge.trainer.modeling.llm import load_causal_lm
from rerankforge.trainer.modeling.lora import adapter_base_model, is_adapter_folder, load_adapter, merged_copy
from rerankforge.trainer.spec import RerankerSpec

MERGE_CARRIES = ("layerwise_heads.safetensors",)


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
    """The merged model, tokenizer, spec (``adapter: false``) and carried files, written into ``folder``."""
    adapter_dir = Path(adapter_dir)
    if not is_adapter_folder(adapter_dir):
        raise ValueError(f"{adapter_dir} holds no LoRA adapter (no adapter_config.json)")
    spec = RerankerSpec.load(adapter_dir)
    base = (spec.base_model if spec is not None else None) or adapter_base_model(adapter_dir)
    if base is None:
        raise ValueError(f"{adapter_dir}: no base model recorded in rerankforge.json or adapter_config.json")
    base_model = load_causal_lm(base, dtype, trust_remote_code=trust_remote_code)
    model = merged_copy(load_adapter(base_model, adapter_dir, trainable=False))
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=trust_remote_code)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if spec is not None:
        dataclasses.replace(spec, extra={**spec.extra, "adapter": False}).save(folder)
    for extra_file in MERGE_CARRIES:  # files beside the adapter that the merged model still needs
        if (adapter_dir / extra_file).is_file():
            shutil.copy2(adapter_dir / extra_file, folder / extra_file)

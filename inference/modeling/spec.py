"""`rerankforge.json`: the contract between training and inference, one typed dataclass per family.

Training writes it next to every checkpoint; inference reads it to rebuild exactly the preprocessing and
scoring that the evaluation during training used. Its lengths are the scoring budgets: a cross-encoder may have
trained on shorter passages (`inference_passage_max_len`; training's own lengths are in training_args.json).

Version 2 writes every field flat and typed. Version 1 (before 2026-12) kept the LLM families' settings in a
free-form ``extra`` dict; such files still load, into the same typed classes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rerankforge.inference.modeling.file_checks import ModelFilesError
from rerankforge.inference.modeling.files import atomic_write_text
from rerankforge.inference.modeling.llm_inputs import DEFAULT_PROMPT

SPEC_FILENAME = "rerankforge.json"
SPEC_VERSION = 2


@dataclass(kw_only=True)
class RerankerSpec:
    """What scoring needs besides the weights and the tokenizer: the family and its token budgets."""

    family_name: ClassVar[str] = ""
    family: str = ""
    query_max_len: int
    passage_max_len: int
    max_length: int
    base_model: str | None = None
    # the training objective's get_config_dict(), for the model card; scoring never reads it
    loss: dict[str, Any] | None = None
    # raw score -> probability fitted on judged held-out pairs (rerankforge.inference.modeling.calibration)
    calibration: dict[str, Any] | None = None
    # how scores fuse with the first stage's, chosen on validation queries (rerankforge.inference.modeling.fusion)
    fusion: dict[str, Any] | None = None
    # how passages longer than the model reads are scored (rerankforge.inference.long_passages.LongPassages)
    long_passages: dict[str, Any] | None = None
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        if not self.family:
            self.family = self.family_name
        if self.family != self.family_name:
            raise ValueError(
                f"a {type(self).__name__} describes family {self.family_name!r}, not {self.family!r}"
            )

    def card_lines(self) -> list[str]:
        """What the model card says of this family's scoring, beyond the budgets."""
        return []

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    def save(self, folder: str | Path) -> Path:
        return atomic_write_text(Path(folder) / SPEC_FILENAME, self.to_json())

    @staticmethod
    def from_json(text: str, source: str = SPEC_FILENAME) -> RerankerSpec:
        """The typed spec of the family the text names (versions 1 and 2); errors name ``source``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ModelFilesError(f"{source} is not valid JSON ({error}): the file is damaged") from None
        if not isinstance(data, dict):
            raise ModelFilesError(f"{source} is not a JSON object: the file is damaged")
        version = data.get("version")
        if isinstance(version, int) and version > SPEC_VERSION:
            raise ModelFilesError(
                f"{source}: version {version} is newer than this rerankforge reads (1 to {SPEC_VERSION}): "
                "upgrade rerankforge"
            )
        if not isinstance(version, int) or version < 1:
            raise ModelFilesError(
                f"{source}: version {version!r} is not a rerankforge.json version (1 to {SPEC_VERSION})"
            )
        if version == 1:  # the family settings moved out of `extra` into typed fields
            data = {**{k: v for k, v in data.items() if k != "extra"}, **(data.get("extra") or {})}
            data["version"] = SPEC_VERSION
        family = data.get("family")
        classes = spec_classes()
        if family not in classes:
            raise ModelFilesError(f"{source}: unknown family {family!r}; known: {', '.join(classes)}")
        cls = classes[family]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelFilesError(f"{source}: unknown key(s) {', '.join(unknown)} for family {family!r}")
        try:
            return cls(**data)
        except TypeError as error:  # a required field is missing
            raise ModelFilesError(f"{source}: {error}") from None

    @staticmethod
    def load(folder: str | Path) -> RerankerSpec | None:
        """The spec in ``folder``, or None for a folder that rerankforge did not write."""
        path = Path(folder) / SPEC_FILENAME
        if not path.is_file():
            return None
        return RerankerSpec.from_json(path.read_text(encoding="utf-8"), source=str(path))

    @staticmethod
    def update(folder: str | Path, action: str, **fields: Any) -> RerankerSpec:
        """Set ``fields`` in the folder's `rerankforge.json` (atomically; nothing else changes): what a fitted
        calibration, a chosen fusion or long-passage settings store. ``action`` completes the refusal for a folder
        rerankforge did not write ("calibrate" -> "calibrate a folder rerankforge wrote")."""
        spec = RerankerSpec.load(folder)
        if spec is None:
            raise ValueError(f"{folder} has no rerankforge.json: {action} a folder rerankforge wrote")
        for name, value in fields.items():
            setattr(spec, name, value)
        spec.save(folder)
        return spec


@dataclass(kw_only=True)
class CrossEncoderSpec(RerankerSpec):
    """A sequence classifier with one logit: nothing beyond the budgets."""

    family_name: ClassVar[str] = "cross_encoder"


@dataclass(kw_only=True)
class LLMSpec(RerankerSpec):
    """A decoder scored at the last position: the prompt, the score mode and the answer tokens' ids.

    The ids are resolved once from the tokenizer when training starts, so training and inference read the same
    vocabulary rows.
    """

    family_name: ClassVar[str] = "llm"
    input_format: str = "bge"  # rerankforge.inference.modeling.llm_formats: bge, qwen3 or chat
    prompt: str = DEFAULT_PROMPT
    score: str = "yes"
    yes_token: str = "Yes"
    yes_token_id: int
    no_token: str = "No"
    no_token_id: int | None = None
    adapter: bool = False  # the folder holds a LoRA adapter on base_model, not full weights

    def card_lines(self) -> list[str]:
        score = f"logit of {self.yes_token!r}"
        if self.score == "yes_minus_no":
            score += f" minus the logit of {self.no_token!r}"
        if self.score == "yes_minus_no" and self.input_format != "bge":
            score = f"log-odds of {self.yes_token!r} against {self.no_token!r}"
        prompt = "prompt" if self.input_format == "bge" else "instruction"
        return [
            f"input format: {self.input_format}; {prompt}: {self.prompt!r}; score: {score} at the last position"
        ]


@dataclass(kw_only=True)
class LayerwiseSpec(LLMSpec):
    """An LLM spec plus the layers that have score heads (1-based) and the decoder's depth."""

    family_name: ClassVar[str] = "layerwise"
    layers: list[int] = field(default_factory=list)
    num_layers: int

    def card_lines(self) -> list[str]:
        return [
            *super().card_lines(),
            f"score heads on layers {self.layers[0]}-{self.layers[-1]} of {self.num_layers}",
        ]


def spec_classes() -> dict[str, type[RerankerSpec]]:
    """``family -> spec class`` of every RerankerSpec subclass defined so far: a family's spec is declared by its
    class alone (a new family's spec becomes readable from rerankforge.json by being defined)."""
    found: dict[str, type[RerankerSpec]] = {}
    pending = list(RerankerSpec.__subclasses__())
    while pending:
        cls = pending.pop(0)
        found.setdefault(cls.family_name, cls)
        pending.extend(cls.__subclasses__())
    return found

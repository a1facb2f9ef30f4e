"""Check a model folder's files before transformers, peft or safetensors read them, so that a damaged or
mismatched folder gives an error naming the file and what is wrong (`ModelFilesError`).

What is checked: the `rerankforge.json` version and family (against the loading class and against config.json's
architecture), every safetensors file's header against the file's size (truncated copies, altered headers), the
shards a sharded index names, an adapter's weights, and the tokenizer files.

What cannot be checked: bytes changed inside a tensor's data. Safetensors stores no checksum, so such a file
loads, with wrong weights; only a hash of the whole file (the Hub's, say) tells.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any


class ModelFilesError(ValueError):
    """A model folder's file is missing, damaged or of another kind; the message names the file."""


MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
# bits per element of each safetensors dtype; an unknown (newer) dtype is not size-checked
DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
              "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
              "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}  # fmt: skip
SHARD_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_CONFIG = "tokenizer_config.json"
VOCABULARY_HINT = "tokenizer.json, vocab.txt, vocab.json with merges.txt, or a sentencepiece *.model"
NO_VOCABULARY_FILE = {"ByT5Tokenizer", "CanineTokenizer"}  # byte/character tokenizers
SEQUENCE_CLASSIFIER, CAUSAL_LM = "sequence classifier", "causal LM"
TRUNCATED = "the file is truncated (an interrupted download or copy?)"
ALTERED = "the header was altered"


def check_safetensors(file: str | Path) -> None:
    """The header's length and JSON, each tensor's dtype, shape and offsets, and the file's size agree."""
    file = Path(file)
    size = file.stat().st_size
    if size < 8:
        raise ModelFilesError(f"{file} is {size} bytes, too few for a safetensors file: {TRUNCATED}")
    with file.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if not 2 <= header_len <= MAX_HEADER_BYTES:
            raise ModelFilesError(
                f"{file}: its first 8 bytes give a header of {header_len} bytes, not a safetensors header "
                "length: the file is not safetensors, or its start was altered"
            )
        if 8 + header_len > size:
            raise ModelFilesError(
                f"{file} is {size} bytes, its header alone needs {8 + header_len}: {TRUNCATED}"
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFilesError(f"{file}: its header is not valid JSON ({error}): {ALTERED}") from None
    if not isinstance(header, dict):
        raise ModelFilesError(f"{file}: its header is JSON but not an object: {ALTERED}")
    data_bytes = size - 8 - header_len
    tensors = [
        (name, _tensor_span(file, name, entry)) for name, entry in header.items() if name != "__metadata__"
    ]
    end = 0
    for name, (begin, stop) in sorted(tensors, key=lambda t: t[1]):
        if begin != end:
            beyond = f", beyond the file's {data_bytes} data bytes," if stop > data_bytes else ""
            expected = f"where the previous tensor ends ({end})" if end else "at 0, where the data starts"
            raise ModelFilesError(
                f"{file}: tensor {name!r} has data_offsets [{begin}, {stop}]{beyond} not {expected}: {ALTERED}"
            )
        end = stop
    described = 8 + header_len + end
    if size < described:
        raise ModelFilesError(f"{file} is {size} bytes, its header describes {described}: {TRUNCATED}")
    if size > described:
        raise ModelFilesError(
            f"{file} is {size} bytes, its header describes {described}: {size - described} bytes too many "
            "(the file was altered, or is not one safetensors file)"
        )


def _tensor_span(file: Path, name: str, entry: Any) -> tuple[int, int]:
    """A header entry's data_offsets, checked against its dtype and shape."""
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] and isinstance(shape, list)
        and all(isinstance(d, int) and d >= 0 for d in shape) and isinstance(entry.get("dtype"), str)
    ):  # fmt: skip
        raise ModelFilesError(
            f"{file}: tensor {name!r} has no valid dtype, shape and data_offsets: {ALTERED}"
        )
    begin, stop = offsets
    bits = DTYPE_BITS.get(entry["dtype"])
    if bits is not None:
        elements = 1
        for d in shape:
            elements *= d
        if elements * bits != (stop - begin) * 8:
            nbytes = elements * bits // 8 if elements * bits % 8 == 0 else elements * bits / 8
            raise ModelFilesError(
                f"{file}: tensor {name!r} is {entry['dtype']} {shape} ({nbytes} bytes), but its "
                f"data_offsets [{begin}, {stop}] span {stop - begin} bytes: {ALTERED}"
            )
    return begin, stop


def read_json(file: Path) -> Any:
    """A JSON file of a model folder, or an error naming it."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFilesError(f"{file} is not valid JSON ({error}): the file is damaged") from None


def weight_files(folder: str | Path) -> list[Path]:
    """The folder's safetensors files and the shards its index names (an error if the index names a missing one)."""
    folder = Path(folder)
    files = set(folder.glob("*.safetensors"))
    index = folder / SHARD_INDEX
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelFilesError(f"{index} has no weight_map: the file is damaged")
        shards = sorted({s for s in weight_map.values() if isinstance(s, str)})
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ModelFilesError(
                f"{index} names shard(s) {', '.join(missing)}, missing from {folder}: an incomplete download or copy?"
            )
        files.update(folder / s for s in shards)
    return sorted(files)


def check_weights(folder: str | Path) -> None:
    """Every safetensors file the folder holds or indexes is whole; an adapter folder has its weights."""
    folder = Path(folder)
    if (folder / ADAPTER_CONFIG).is_file() and not any((folder / n).is_file() for n in ADAPTER_WEIGHTS):
        raise ModelFilesError(
            f"{folder / ADAPTER_WEIGHTS[0]} is missing: the folder has {ADAPTER_CONFIG} but not the adapter's weights"
        )
    for file in weight_files(folder):
        check_safetensors(file)


def model_files(folder: Path) -> list[Path]:
    """A sentencepiece or tiktoken vocabulary (``*.model``, ``*.spm``, ``*.tiktoken``)."""
    return [p for p in folder.iterdir() if p.suffix in (".model", ".spm", ".tiktoken") and p.is_file()]


def has_tokenizer_files(folder: Path) -> bool:
    names = ("tokenizer.json", TOKENIZER_CONFIG, "vocab.txt", "vocab.json", "merges.txt")
    return any((folder / n).is_file() for n in names) or bool(model_files(folder))


def check_tokenizer_files(folder: str | Path) -> None:
    """``tokenizer_config.json`` (without it transformers silently builds a tokenizer without the saved special
    tokens and casing) and a vocabulary: tokenizer.json, vocab.txt, vocab.json + merges.txt or a sentencepiece
    model. Tokenizers with remote code, and byte-level ones, are not checked for a vocabulary."""
    folder = Path(folder)
    missing = []
    config_file = folder / TOKENIZER_CONFIG
    config = read_json(config_file) if config_file.is_file() else None
    if config is None:
        missing.append(TOKENIZER_CONFIG)
    elif not isinstance(config, dict):
        raise ModelFilesError(f"{config_file} is not a JSON object: the file is damaged")
    needs_vocabulary = config is None or not (
        "auto_map" in config or config.get("tokenizer_class") in NO_VOCABULARY_FILE
    )
    has_vocabulary = (
        any((folder / n).is_file() for n in ("tokenizer.json", "vocab.txt"))
        or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())
        or bool(model_files(folder))
    )
    if needs_vocabulary and not has_vocabulary:
        if (folder / "vocab.json").is_file():
            missing.append("merges.txt (beside vocab.json)")
        else:
            missing.append(f"a vocabulary file ({VOCABULARY_HINT})")
    if missing:
        raise ModelFilesError(
            f"{folder}: tokenizer file(s) missing: {' and '.join(missing)}; copy them from the model it was "
            "trained from (or save the tokenizer there)"
        )


def architecture(folder: Path) -> tuple[str, str | None] | None:
    """config.json's architecture and its kind (sequence classifier, causal LM, or None: another), if it names one."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        return None
    config = read_json(config_file)
    names = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(names, list) or not names or not isinstance(names[0], str):
        return None
    name = names[0]
    if name.endswith("ForSequenceClassification"):
        return name, SEQUENCE_CLASSIFIER
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return name, CAUSAL_LM
    return name, None

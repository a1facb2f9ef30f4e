"""Where training data comes from: one file, several files or a folder of JSONL, read with `datasets`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import datasets

from rerankforge.data_tools.data_names import data_path
from rerankforge.data_tools.schema import DataValidationError, validate_files

DATA_SUFFIXES = (".jsonl", ".json")

# Explicit features: files that omit an optional field still line up, and nothing is inferred wrongly.
TRAIN_FEATURES = datasets.Features(
    {
        "query": datasets.Value("string"),
        "pos": datasets.Sequence(datasets.Value("string")),
        "neg": datasets.Sequence(datasets.Value("string")),
        "pos_scores": datasets.Sequence(datasets.Value("float64")),
        "neg_scores": datasets.Sequence(datasets.Value("float64")),
        "prompt": datasets.Value("string"),
    }
)


def resolve_data_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (or data names: `data_names.data_path`) into a sorted list of data files; a
    missing path is an error, not a skip."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for raw in paths:
        path = data_path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{path}: folder holds no {' or '.join(DATA_SUFFIXES)} files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


def load_train_dataset(
    paths: str | Path | Sequence[str | Path],
    train_group_size: int | None = None,
    require_teacher_scores: bool = False,
) -> datasets.Dataset:
    """Validate every line, then load all records with `datasets`; raises DataValidationError on any problem."""
    files = resolve_data_files(paths)
    report = validate_files(files, train_group_size, require_teacher_scores)
    if not report.ok:
        raise DataValidationError(report)
    loaded = datasets.load_dataset(
        "json", data_files=[str(f) for f in files], features=TRAIN_FEATURES, split="train"
    )
    if len(loaded) != report.records:  # a loader that drops lines would silently lose data
        raise RuntimeError(f"validated {report.records} records but `datasets` loaded {len(loaded)}")
    return loaded

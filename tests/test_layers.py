"""The layered design (docs/development.md, "Layers"): setup.cfg's import contract holds, breaks when an upward
import or a cycle is added, and no import hides inside a function except those of optional dependencies."""

from __future__ import annotations

import ast
import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "data_tools", "inference")
# the only imports allowed inside functions: packages of setup.cfg's extras, which a scoring-only install lacks
# (module -> its distribution); matplotlib's backend must also be chosen before pyplot loads
OPTIONAL_IMPORTS = {"sentence_transformers": "sentence-transformers", "faiss": "faiss-cpu", "peft": "peft",
                    "deepspeed": "deepspeed", "onnxruntime": "onnxruntime", "openvino": "openvino",
                    "wandb": "wandb", "matplotlib": "matplotlib"}  # fmt: skip


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter over the rerankforge packages found first on the path from ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
               "--config", str(REPO / "setup.cfg"), "--no-cache"]  # fmt: skip
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)


def copy_of_the_packages(tmp_path: Path) -> Path:
    """The three packages under tmp_path/rerankforge (a namespace package, as installed), ahead on the path."""
    for name in PACKAGES:
        shutil.copytree(
            REPO / name, tmp_path / "rerankforge" / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    return tmp_path


def test_the_import_contract_holds_on_the_repository(tmp_path):
    result = lint_imports(copy_of_the_packages(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Contracts: 3 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("importer", "line", "broken"),
    [
        # the model layer reaching up into the trainer
        ("inference/modeling/spec.py", "from rerankforge.trainer import config", "trainer above data_tools"),
        # the model layer reaching into inference's own code (pairs imports nothing back: no cycle, one contract)
        ("inference/modeling/spec.py", "from rerankforge.inference import pairs", "the model layer"),
        # data tools reaching up into the trainer
        ("data_tools/schema.py", "from rerankforge.trainer import cli", "trainer above data_tools"),
        # two modules of one package importing each other (the checkpoints module is imported by train.py)
        ("trainer/checkpoints.py", "from rerankforge.trainer import training_run", "no cycle"),
    ],
)
def test_an_upward_import_or_a_cycle_breaks_the_contract(tmp_path, importer, line, broken):
    root = copy_of_the_packages(tmp_path)
    module = root / "rerankforge" / importer
    module.write_text(module.read_text(encoding="utf-8") + f"\n{line}  # noqa\n", encoding="utf-8")
    result = lint_imports(root)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 broken" in result.stdout
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout


def imports_inside_functions() -> list[tuple[str, int, str, str]]:
    """(file, line, imported module, its comment lines) of every import statement inside a function: the
    comment is the statement's own or that of the comment line above it (or above its group of imports)."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            lines = source.splitlines()
            for node in ast.walk(ast.parse(source)):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import | ast.ImportFrom):
                        name = inner.module if isinstance(inner, ast.ImportFrom) else inner.names[0].name
                        above = inner.lineno - 2
                        while above >= 0 and lines[above].strip().startswith(("from ", "import ")):
                            above -= 1  # the comment may head a group of imports
                        text = lines[inner.lineno - 1] + (lines[above] if above >= 0 else "")
                        found.append((str(path.relative_to(REPO)), inner.lineno, name or "", text))
    return found


def test_imports_inside_functions_are_only_optional_dependencies_and_say_so():
    found = imports_inside_functions()
    assert found, "the scan found no import inside a function at all: it is not reading the code"
    wrong = [
        f"{file}:{line} {name}" for file, line, name, _ in found if name.split(".")[0] not in OPTIONAL_IMPORTS
    ]
    assert not wrong, f"imports inside functions that are not optional dependencies: {wrong}"
    silent = [f"{file}:{line}" for file, line, _, text in found if "#" not in text]
    assert not silent, f"an optional import without a comment saying why it is there: {silent}"


def test_the_optional_imports_are_extras_and_not_the_core():
    """What may be imported inside a function belongs to an extra, never to the core (install_requires)."""
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg", encoding="utf-8")

    def names(text: str) -> set[str]:
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        return {canonicalize_name(Requirement(line).name) for line in lines if line}

    core = names(setup.get("options", "install_requires"))
    extras = set().union(*(names(text) for _, text in setup.items("options.extras_require")))
    in_core = sorted(d for d in OPTIONAL_IMPORTS.values() if d in core)
    assert not in_core, f"imported inside functions as optional, yet in install_requires: {in_core}"
    undeclared = sorted(d for d in OPTIONAL_IMPORTS.values() if d not in extras)
    assert not undeclared, f"imported inside functions as optional, yet in no extra: {undeclared}"

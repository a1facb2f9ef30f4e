"""The pins `make test-floors` installs come from setup.cfg itself, and the check that prints them catches drift."""

from __future__ import annotations

import configparser
import sys
from importlib.metadata import version

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "stacks"))

import pins  # noqa: E402


def test_every_declared_requirement_is_pinned_at_its_lower_bound():
    declared = pins.declared_requirements(pins.SETUP_CFG, ["dev"])
    floors = dict(line.split("==") for line in pins.floor_pins(pins.SETUP_CFG, ["dev"], ["torch"]))
    assert "torch" not in floors  # installed apart: the CPU build on disk
    assert {r.name for r in declared} - {"torch"} == set(floors)
    for requirement in declared:
        if requirement.name != "torch":
            lower = next(s.version for s in requirement.specifier if s.operator == ">=")
            assert floors[requirement.name] == lower


def test_a_requirement_without_a_lower_bound_is_refused(tmp_path):
    setup_cfg = tmp_path / "setup.cfg"
    setup_cfg.write_text("[options]\ninstall_requires =\n    numpy>=1.0\n    requests\n")
    with pytest.raises(SystemExit, match="requests declares no lower bound"):
        pins.floor_pins(setup_cfg, [], [])
    with pytest.raises(SystemExit, match="no extra named 'gpu'"):
        pins.floor_pins(setup_cfg, ["gpu"], [])


def test_the_check_reports_what_is_installed_and_fails_on_a_difference(tmp_path, capsys):
    installed = version("pytest")
    good = tmp_path / "good.txt"
    good.write_text(f"# a comment\npytest=={installed}\n")
    assert pins.main(["check", str(good)]) == 0
    assert f"ok       pytest {installed} (pinned {installed})" in capsys.readouterr().out
    bad = tmp_path / "bad.txt"
    bad.write_text("pytest==1.0\nno-such-package-here==1.0\n")
    assert pins.main(["check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"MISMATCH pytest {installed} (pinned 1.0)" in out
    assert "MISMATCH no-such-package-here not installed (pinned 1.0)" in out


def test_an_extra_naming_the_projects_own_extras_brings_theirs_once(tmp_path):
    setup_cfg = tmp_path / "setup.cfg"
    setup_cfg.write_text(
        "[metadata]\nname = proj\n[options]\ninstall_requires =\n    numpy>=1.0\n[options.extras_require]\n"
        "base =\n    bm25s>=0.2\n    numpy>=1.5\nmore =\n    proj[base]\n    peft>=0.18\n"
        "loop =\n    Proj[more,loop]\n    ruff>=0.12\n"
    )
    assert pins.floor_pins(setup_cfg, ["loop"], []) == [
        "numpy==1.0",
        "bm25s==0.2",
        "peft==0.18",
        "ruff==0.12",
    ]
    setup_cfg.write_text(setup_cfg.read_text() + "broken =\n    proj[nothing]\n")
    with pytest.raises(SystemExit, match="no extra named 'nothing'"):
        pins.floor_pins(setup_cfg, ["broken"], [])


def test_the_dev_extra_reaches_every_extra_but_deepspeed():
    """`make test-floors` pins [dev]: so every package an extra declares (but DeepSpeed, installed apart by
    `make test-slow`) is tested at its floor, and `pip install -e ".[dev]"` is the whole test environment."""
    setup = configparser.ConfigParser()
    setup.read(pins.SETUP_CFG, encoding="utf-8")
    extras = [name for name in setup["options.extras_require"] if name != "deepspeed"]
    every = {r.name for r in pins.declared_requirements(pins.SETUP_CFG, extras)}
    assert every == {r.name for r in pins.declared_requirements(pins.SETUP_CFG, ["dev"])}
    assert "deepspeed" not in every and "peft" in every and "bm25s" in every

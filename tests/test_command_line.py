"""`rerankforge VERB ...`: the installed command lists its verbs, hands each the rest of the command line and
returns its exit code, and every `rerankforge-*` alias of setup.cfg is one of its verbs."""

from __future__ import annotations

import configparser
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FE_TOY, REPO

from rerankforge.trainer.command_line import VERBS, main

BIN = Path(sys.executable).parent
TOY_DATA = FE_TOY / "example_data" / "normal" / "examples.jsonl"


def console_scripts() -> dict[str, str]:
    """setup.cfg's console scripts: name -> "module:function"."""
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg", encoding="utf-8")
    lines = setup["options.entry_points"]["console_scripts"].splitlines()
    pairs = [line.split("=", 1) for line in lines if "=" in line and not line.strip().startswith("#")]
    return {name.strip(): target.strip() for name, target in pairs}


def installed(name: str) -> Path:
    script = BIN / name
    assert script.is_file(), (
        f"{script} is missing: run `{BIN / 'pip'} install -e . --no-deps` after setup.cfg changed"
    )
    return script


def run(*argv: str | Path) -> subprocess.CompletedProcess:
    """The command in a fresh process; without conftest's WANDB_MODE=offline, which makes transformers' Trainer
    print a line when imported (the verbs import it, `rerankforge-data` does not), and offline."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"} | {"HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, cwd=REPO, env=env, timeout=300, check=False
    )


def test_every_alias_is_a_verb_that_runs_the_same_function():
    scripts = console_scripts()
    assert scripts.pop("rerankforge") == "rerankforge.trainer.command_line:run"
    aliases = {name.removeprefix("rerankforge-"): target for name, target in scripts.items()}
    assert set(aliases) == set(VERBS)
    for verb, target in aliases.items():
        module, _, function = target.partition(":")
        assert function == "run"  # each alias's run() is sys.exit(main()): the verb calls that main
        assert VERBS[verb].main is importlib.import_module(module).main


def test_help_lists_every_verb_with_its_purpose():
    result = run(installed("rerankforge"), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: rerankforge [-h] VERB [ARGS ...]")
    for name, verb in VERBS.items():
        assert f"  {name}" in result.stdout and verb.purpose in result.stdout


def test_a_verbs_help_is_its_own_under_the_name_typed():
    result = run(installed("rerankforge"), "train", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: rerankforge train RECIPE.yaml [--key value ...]")
    assert "rerankforge train RECIPE.yaml" in result.stdout and "--learning_rate" in result.stdout


@pytest.mark.skipif(not TOY_DATA.is_file(), reason="needs ../shared/data/fe-toy")
def test_a_verb_runs_end_to_end_as_its_alias_does():
    verb = run(installed("rerankforge"), "data", "check", TOY_DATA)
    alias = run(installed("rerankforge-data"), "check", TOY_DATA)
    assert verb.returncode == alias.returncode == 0, verb.stderr
    assert verb.stdout == alias.stdout and "queries: 10" in verb.stdout and "no problems found" in verb.stdout


def test_exit_codes_pass_through(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert main(["data", "check", str(missing / "x.jsonl")]) == 2  # the verb's own code for bad input
    assert main(["train", str(missing / "recipe.yaml")]) == 2
    assert "missing/recipe.yaml" in capsys.readouterr().err
    for argv in (
        ["eval"],
        [],
        ["bogus"],
    ):  # argparse's exits: a verb's missing option, no verb, an unknown one
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2
    assert sys.argv[0] != "rerankforge eval"  # the verb's program name does not outlive its run

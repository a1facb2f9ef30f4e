"""`from rerankforge.trainer import train`: a recipe plus keyword overrides runs what the command line runs."""

from __future__ import annotations

import json

import pytest
from conftest import REPO
from score_checks import assert_same_scores

from rerankforge.inference.auto import load_reranker
from rerankforge.trainer import RunConfig, TrainingResult, train
from rerankforge.trainer.cli import RecipeError, load_recipe, main, parse_config

TOY_RECIPE = REPO / "recipes" / "minilm" / "cross_encoder" / "toy.yaml"
PAIRS = [
    ("what is a panda?", "The giant panda is a bear species endemic to China."),
    ("what is a panda?", "Paris is the capital of France."),
    ("how do plants make food?", "Photosynthesis turns light, water and carbon dioxide into sugar."),
    ("how do plants make food?", "The stock market fell on Monday."),
    ("what is a panda?", "Pandas eat bamboo for most of the day."),
]


def test_train_from_python_equals_the_command_line(tmp_path, monkeypatch, tiny_bert_dir):
    """Same recipe, same overrides (Python values here, strings there), same seed: the same trained weights."""
    monkeypatch.chdir(REPO)  # the recipe names its data relative to the repository
    common = dict(model_name_or_path=str(tiny_bert_dir), max_steps=3, disable_tqdm=True)
    result = train(TOY_RECIPE, output_dir=str(tmp_path / "python"), loss="listnet", **common)
    assert isinstance(result, TrainingResult) and result.output_dir == tmp_path / "python"
    assert result.metrics["train_loss"] > 0 and "train_runtime" in result.metrics
    argv = [str(TOY_RECIPE), "--output_dir", str(tmp_path / "cli"), "--loss", "listnet",
            "--model_name_or_path", str(tiny_bert_dir), "--max_steps", "3", "--disable_tqdm", "true"]  # fmt: skip
    assert main(argv) == 0
    settings = {**load_recipe(TOY_RECIPE), **common, "output_dir": str(tmp_path / "run"), "loss": "listnet"}
    train(RunConfig.from_settings(**settings))
    from_python = load_reranker(str(result.output_dir), device="cpu").compute_score(PAIRS)
    from_cli = load_reranker(str(tmp_path / "cli"), device="cpu").compute_score(PAIRS)
    from_run_config = load_reranker(str(tmp_path / "run"), device="cpu").compute_score(PAIRS)
    untrained = load_reranker(str(tiny_bert_dir), device="cpu").compute_score(PAIRS)
    assert_same_scores(from_python, from_cli)
    assert_same_scores(from_run_config, from_cli)
    assert from_python != pytest.approx(untrained, abs=1e-4)  # it trained
    spec = json.loads((result.output_dir / "rerankforge.json").read_text())
    assert spec["loss"]["loss"]["name"] == "listnet"  # the override reached the run


def test_overrides_are_python_values_and_unknown_keys_are_refused_before_any_compute(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(
        RecipeError, match=r"toy.yaml: unknown key\(s\) train_grup_size for family 'cross_encoder'"
    ):
        train(TOY_RECIPE, train_grup_size=4, output_dir=str(tmp_path / "out"))
    with pytest.raises(RecipeError, match=r"train\(\): unknown key\(s\) lerning_rate"):
        train(
            model_name_or_path="x", train_data=["a.jsonl"], lerning_rate=1.0, output_dir=str(tmp_path / "o")
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()
    run = parse_config([str(TOY_RECIPE)])
    with pytest.raises(TypeError, match="takes no overrides"):
        train(run, max_steps=1)
    with pytest.raises(TypeError, match="takes a recipe or a RunConfig"):  # training settings alone: no data
        train(run.training)

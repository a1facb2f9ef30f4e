"""Recipes parse with the real parser; the tiny recipe runs end to end from the command line."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO, SHARED_DATA

from rerankforge.data_tools.data_names import data_path
from rerankforge.data_tools.known_data import KNOWN_DATA
from rerankforge.inference import Reranker
from rerankforge.trainer.cli import RecipeError, parse_config
from rerankforge.trainer.cross_encoder_config import CrossEncoderConfig
from rerankforge.trainer.losses import LOSSES

RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))
TOY_RECIPE = REPO / "recipes" / "minilm" / "cross_encoder" / "toy.yaml"


def test_there_are_recipes_to_check():
    assert TOY_RECIPE in RECIPES


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(r.relative_to(REPO)) for r in RECIPES])
def test_every_recipe_parses_with_the_real_parser(recipe, monkeypatch, tmp_path):
    if "accelerate" in recipe.parts:  # accelerate's own configs are checked by accelerate, not by us
        pytest.skip("accelerate config")
    monkeypatch.chdir(REPO)
    settings = yaml.safe_load(recipe.read_text())
    if not torch.cuda.is_available() and not settings.get("use_cpu"):
        # a GPU recipe: its DeepSpeed file must be there and valid; the rest is parsed as a CPU run here
        if "deepspeed" in settings:
            json.loads((REPO / settings.pop("deepspeed")).read_text())
        settings["use_cpu"] = True
        recipe = tmp_path / recipe.name
        recipe.write_text(yaml.safe_dump(settings))
    config = parse_config([str(recipe)])
    assert config.training.model_name_or_path and (config.data.train_data or config.data.ir_data)
    for name in [*(config.data.train_data or []), config.data.ir_data, config.data.eval_data]:
        if name is not None and not name.startswith("outputs/"):  # outputs/: made by the guide's commands
            assert name in KNOWN_DATA, (
                f"{recipe.name} names {name}, which is not a data name (docs/training.md)"
            )
            if SHARED_DATA.is_dir():  # the mirror conftest.py sets, as `make train` does
                assert data_path(name).exists()


def test_command_line_overrides_the_recipe(monkeypatch):
    monkeypatch.chdir(REPO)
    config = parse_config([str(TOY_RECIPE), "--train_group_size", "4", "--learning_rate", "1e-4"])
    assert isinstance(config.training, CrossEncoderConfig)
    assert config.training.train_group_size == 4 and config.training.learning_rate == 1e-4
    assert config.training.query_max_len == 32  # untouched recipe value


def test_unknown_recipe_key_is_an_error_that_names_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: m\ntrain_data: d.jsonl\ntrain_grup_size: 4\n")
    with pytest.raises(RecipeError, match=r"r.yaml: unknown key\(s\) train_grup_size"):
        parse_config([str(recipe)])


def test_unknown_command_line_option_is_an_error_that_names_it(capsys):
    from rerankforge.trainer.cli import main

    assert main(["--model_name_or_path", "m", "--train_data", "d", "--train_grup_size", "4"]) == 2
    assert "--train_grup_size" in capsys.readouterr().err


def test_unknown_family_is_an_error():
    with pytest.raises(ValueError, match="unknown family 'bi_encoder'"):
        parse_config(["--family", "bi_encoder", "--model_name_or_path", "m", "--train_data", "d"])


def test_tiny_recipe_runs_end_to_end_from_the_command_line(tmp_path):
    out = tmp_path / "toy"
    command = [
        sys.executable,
        "-m",
        "rerankforge.trainer",
        str(TOY_RECIPE),
        "--output_dir",
        str(out),
        "--num_train_epochs",
        "1",
        "--disable_tqdm",
        "true",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    spec = json.loads((out / "rerankforge.json").read_text())
    assert (
        spec["family"] == "cross_encoder" and spec["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    )
    assert (spec["query_max_len"], spec["passage_max_len"], spec["max_length"]) == (32, 96, 128)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3  # 10 queries in batches of 4, 4, 2

    reranker = Reranker.from_pretrained(str(out), device="cpu")
    query = "what color is amber urine"
    passages = [
        "Amber urine is a dark yellow colour, often a sign of dehydration.",
        "There was a reform in 1996.",
    ]
    ranked = reranker.rank(query, passages)
    assert sorted(r["corpus_id"] for r in ranked) == [0, 1]
    # training moved the encoder away from the packaged MiniLM weights
    from safetensors.torch import load_file

    from rerankforge.inference.modeling.sources import resolve_model_path

    base = load_file(f"{resolve_model_path('sentence-transformers/all-MiniLM-L6-v2')}/model.safetensors")
    trained = load_file(str(out / "model.safetensors"))
    name = next(k for k in base if k.endswith("encoder.layer.5.output.dense.weight"))
    assert not torch.equal(base[name], trained["bert." + name.removeprefix("bert.")])


def test_the_toy_recipe_trains_with_every_loss_and_each_name_chooses_its_loss(
    tmp_path, monkeypatch, capsys, tiny_bert_dir
):
    """Every loss through the command line on the toy recipe's data (teacher scores included), on the tiny
    cross-encoder. The first step's loss is computed on the same batch and the same initial weights in every run
    (same seed), so each name must give its own value: a command line that ignored --loss would log one number."""
    from rerankforge.trainer.cli import main

    monkeypatch.chdir(REPO)
    first_losses: dict[str, float] = {}
    for loss in LOSSES:
        out = tmp_path / loss
        argv = [str(TOY_RECIPE), "--loss", loss, "--max_steps", "1", "--output_dir", str(out),
                "--model_name_or_path", str(tiny_bert_dir), "--disable_tqdm", "true"]  # fmt: skip
        assert main(argv) == 0, (loss, capsys.readouterr().err[-2000:])
        spec = json.loads((out / "rerankforge.json").read_text())
        assert spec["family"] == "cross_encoder" and spec["loss"]["loss"]["name"] == loss
        state = json.loads((out / "trainer_state.json").read_text())
        assert state["global_step"] == 1
        first_losses[loss] = next(entry["loss"] for entry in state["log_history"] if "loss" in entry)
    values = sorted(first_losses.values())
    assert all(b - a > 1e-6 for a, b in itertools.pairwise(values)), first_losses


def test_an_unknown_loss_on_the_command_line_exits_non_zero_naming_the_choices(tmp_path):
    command = [sys.executable, "-m", "rerankforge.trainer", str(TOY_RECIPE), "--loss", "lambdamart",
               "--output_dir", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert f"unknown loss 'lambdamart'; choose one of: {', '.join(LOSSES)}" in done.stderr
    assert not (tmp_path / "out").exists()  # refused before any data or model was read


def test_loss_settings_come_from_the_recipe_or_as_json_on_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TOY_RECIPE.read_text() + "loss_kwargs: {weighting: lambdarank, k: 5}\n")
    config = parse_config([str(recipe), "--loss", "lambda_loss"])
    assert config.training.build_objective().loss.get_config_dict()["weighting"] == "lambdarank"
    config = parse_config([str(TOY_RECIPE), "--loss", "lambda_loss", "--loss_kwargs", '{"k": 3}'])
    assert config.training.loss_kwargs == {"k": 3} and config.training.build_objective().loss.k == 3
    with pytest.raises(ValueError, match="loss 'bce' takes no setting k; its settings: pos_weight"):
        parse_config([str(TOY_RECIPE), "--loss", "bce", "--loss_kwargs", '{"k": 3}'])
    with pytest.raises(ValueError, match="loss_kwargs must be a JSON object"):
        parse_config([str(TOY_RECIPE), "--loss_kwargs", "k=3"])
    config = parse_config([str(TOY_RECIPE), "--knowledge_distillation", "true"])
    assert config.training.distill_loss == "kl" and config.training.needs_teacher_scores
    config = parse_config([str(TOY_RECIPE), "--distill_loss", "margin_mse", "--distill_weight", "0.1"])
    assert config.training.knowledge_distillation and config.training.build_objective().distill_weight == 0.1
    with pytest.raises(ValueError, match="knowledge_distillation is false but distill_loss is 'kl'"):
        parse_config([str(TOY_RECIPE), "--distill_loss", "kl", "--knowledge_distillation", "false"])
    with pytest.raises(ValueError, match="distill_weight 0.5 would change nothing: no distill_loss is set"):
        parse_config([str(TOY_RECIPE), "--distill_weight", "0.5"])
    with pytest.raises(ValueError, match="distill_temperature 2.0 would change nothing"):
        parse_config([str(TOY_RECIPE), "--distill_loss", "margin_mse", "--distill_temperature", "2"])


DEEPSPEED_CONFIGS = sorted((REPO / "recipes" / "deepspeed").glob("*.json"))


@pytest.mark.parametrize("path", DEEPSPEED_CONFIGS, ids=[p.name for p in DEEPSPEED_CONFIGS])
def test_deepspeed_configs_leave_the_trainers_values_auto_and_have_no_scheduler(path):
    config = json.loads(path.read_text())
    assert "scheduler" not in config  # it would silently replace the Trainer's schedule
    owned = [
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ]
    assert {key: config[key] for key in owned} == dict.fromkeys(owned, "auto")
    assert set(config["optimizer"]["params"].values()) == {"auto"}
    assert config["bf16"]["enabled"] == config["fp16"]["enabled"] == "auto"

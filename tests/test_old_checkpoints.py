"""Checkpoints written by earlier versions of rerankforge still load and score the same."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rerankforge.inference import LayerwiseReranker
from rerankforge.inference.auto import load_reranker

FIXTURES = Path(__file__).with_name("fixtures")


def copy_fixture(name: str, tmp_path: Path) -> tuple[Path, dict]:
    """The fixture's checkpoint in ``tmp_path``, its base model named by absolute path there."""
    root = shutil.copytree(FIXTURES / name, tmp_path / name)
    checkpoint = root / "checkpoint"
    for file, key in (("rerankforge.json", "base_model"), ("adapter_config.json", "base_model_name_or_path")):
        data = json.loads((checkpoint / file).read_text())
        data[key] = str(root / data[key])
        (checkpoint / file).write_text(json.dumps(data))
    return checkpoint, json.loads((root / "expected_scores.json").read_text())


def test_a_version_1_layerwise_lora_checkpoint_scores_as_it_did(tmp_path):
    checkpoint, expected = copy_fixture("v1-layerwise-lora", tmp_path)
    reranker = LayerwiseReranker.from_pretrained(str(checkpoint), device="cpu")
    scores = reranker.compute_score(expected["pairs"], cutoff_layers=expected["cutoff_layers"])
    for layer_scores, layer_expected in zip(scores, expected["scores"], strict=True):
        assert layer_scores == pytest.approx(layer_expected, abs=1e-5)
    last = load_reranker(str(checkpoint), device="cpu").compute_score(expected["pairs"])
    assert last == pytest.approx(expected["scores"][-1], abs=1e-5)

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


def test_a_version_1_layerwise_checkpoint_continues_by_adapter_but_refuses_to_resume(tmp_path):
    from rerankforge.trainer.training_run import refuse_legacy_heads

    checkpoint, _ = copy_fixture("v1-layerwise-lora", tmp_path)
    with pytest.raises(
        ValueError, match="cannot resume, but a new run continues from it with adapter_name_or_path"
    ):
        refuse_legacy_heads(str(checkpoint))


def test_a_new_run_continues_from_a_version_1_layerwise_adapter_heads_included(tmp_path):
    import torch
    from conftest import write_jsonl
    from test_cross_encoder_training import toy_records

    from rerankforge.data_tools import load_train_dataset
    from rerankforge.inference.modeling.llm_inputs import LLMPromptEncoder
    from rerankforge.trainer.families import build_trainer
    from rerankforge.trainer.layerwise_config import LayerwiseRerankerConfig

    checkpoint, expected = copy_fixture("v1-layerwise-lora", tmp_path)
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(4))
    config = LayerwiseRerankerConfig(
        model_name_or_path=str(checkpoint.parent / "base"), adapter_name_or_path=str(checkpoint),
        output_dir=str(tmp_path / "out"), start_layer=2, train_group_size=4,
        query_max_len=16, passage_max_len=32, lora_rank=2, lora_alpha=4, report_to="none", use_cpu=True,
    )  # fmt: skip
    trainer = build_trainer(config, load_train_dataset([str(data)], 4))
    trainer.model.eval()
    encoder = LLMPromptEncoder(trainer.processing_class, 16, 32)
    pairs = expected["pairs"]
    batch = encoder.pad_left(encoder.encode([q for q, _ in pairs], [p for _, p in pairs]), None)
    with torch.no_grad():
        scores = trainer.model(**batch)
    for layer, layer_expected in zip(expected["cutoff_layers"], expected["scores"], strict=True):
        assert scores[f"layer{layer}"].tolist() == pytest.approx(layer_expected, abs=1e-5)
    heads = {n: p.requires_grad for n, p in trainer.model.named_parameters() if "modules_to_save" in n}
    assert heads and all(grad != n.endswith(".bias") for n, grad in heads.items())  # biases stay zero
    trainer.save_model(config.output_dir)  # saved in today's layout: the heads inside the adapter
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert {k for k in saved if ".heads." in k} == {f"base_model.model.heads.{k}.{n}" for k in (2, 3)
                                                    for n in ("weight", "bias")}  # fmt: skip
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["modules_to_save"] == [
        "heads.2", "heads.3"]  # fmt: skip

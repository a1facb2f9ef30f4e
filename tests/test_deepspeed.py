"""DeepSpeed ZeRO-2 and ZeRO-3 on this CPU (DeepSpeed's CPU accelerator), with the repository's configs.

One process per run: with two torchrun processes on this CPU, DeepSpeed 0.19.8's CPU accelerator counted a world
size of 1 and refused the Trainer's batch settings (2 processes are covered by the DDP tests).

Marked slow: the first ZeRO run compiles a shared-memory op (about 2.5 minutes, cached by torch in
~/.cache/torch_extensions for later runs). `pytest -m slow tests/test_deepspeed.py`
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, write_jsonl
from safetensors.torch import load_file
from score_checks import assert_same_scores
from test_cross_encoder_training import toy_records

from rerankforge.inference import Reranker

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
WORKER = Path(__file__).with_name("ddp_worker.py")


def run_zero(tmp_path, model_dir, stage_file: str, family: str = "cross_encoder", **extra):
    pytest.importorskip("deepspeed")
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(16))
    out = tmp_path / "out"
    recipe = dict(
        family=family, model_name_or_path=str(model_dir), train_data=[str(data)], output_dir=str(out),
        train_group_size=4, query_max_len=16, passage_max_len=32, per_device_train_batch_size=2, max_steps=4,
        gradient_accumulation_steps=1, learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True, dataloader_pin_memory=False, seed=0,
        deepspeed=str(REPO / "recipes" / "deepspeed" / stage_file),
    )  # fmt: skip
    recipe.update(extra)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(WORKER.parent)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", str(WORKER), str(path)]
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_zero2_trains_the_cross_encoder(tmp_path, tiny_bert_dir):
    out = run_zero(tmp_path, tiny_bert_dir, "zero2.json")
    assert json.loads((out / "rank0.json").read_text()) == {
        "world_size": 1,
        "global_step": 4,
        "train_batch_size": 2,
    }
    a = load_file(out / "rank0.safetensors")
    saved = load_file(out / "model.safetensors")
    assert all(torch.equal(a[k], saved[k]) for k in saved)  # the saved model is the trained one
    start = load_file(tiny_bert_dir / "model.safetensors")
    assert not torch.equal(a["classifier.weight"], start["classifier.weight"])
    scores = Reranker.from_pretrained(str(out), device="cpu").compute_score([["a", "b"], ["c", "d"]])
    assert all(torch.isfinite(torch.tensor(scores)))


def test_zero3_trains_and_saves_gathered_full_weights(tmp_path, tiny_bert_dir):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    out = run_zero(tmp_path, tiny_bert_dir, "zero3.json", save_strategy="steps", save_steps=4)
    saved = load_file(out / "model.safetensors")
    start = load_file(tiny_bert_dir / "model.safetensors")
    numel = [sum(t.numel() for t in weights.values()) for weights in (saved, start)]
    assert len(saved) == len(start) and numel[0] == numel[1]  # gathered, not shards
    # the engine's own (sharded) fp32 weights after the last step, put together by DeepSpeed's tool
    engine = get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoint-4"))
    loaded = Reranker.from_pretrained(str(out), device="cpu")
    weights = loaded.model.state_dict()
    assert "classifier.weight" in engine and set(engine) <= set(weights)
    for name, tensor in engine.items():  # the folder holds the trained values, whole
        assert weights[name].shape == start[name].shape == tensor.shape, name
        assert torch.allclose(weights[name], tensor, atol=1e-6), name
    assert not torch.equal(weights["classifier.weight"], start["classifier.weight"])

    pairs = [[r["query"], p] for r in toy_records(4) for p in r["pos"] + r["neg"][:2]]
    trained = Reranker.from_pretrained(str(tiny_bert_dir), device="cpu")
    untrained = trained.compute_score(pairs)
    missing, unexpected = trained.model.load_state_dict(engine, strict=False)
    assert not unexpected and all(not k.endswith(("weight", "bias")) for k in missing)  # buffers only
    scores = loaded.compute_score(pairs)
    assert_same_scores(scores, trained.compute_score(pairs))  # as the engine's weights score
    assert max(abs(a - b) for a, b in zip(scores, untrained, strict=True)) > 1e-3  # and not as it started


def test_zero2_trains_the_llm_family_with_lora(tmp_path, tiny_llm_dirs):
    out = run_zero(tmp_path, tiny_llm_dirs("llama"), "zero2.json", family="llm", lora_rank=4, lora_alpha=8)
    a = load_file(out / "rank0.safetensors")
    lora_b = [k for k in a if "lora_B" in k]
    assert lora_b and any(a[k].abs().sum() > 0 for k in lora_b)
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("stage_file", ["zero2.json", "zero3.json"])
def test_the_layerwise_family_trains_and_saves_its_heads_under_zero2_and_zero3(
    tmp_path, tiny_llm_dirs, stage_file
):
    """The heads are the model's own weights (peft's modules_to_save): ZeRO-3 gathers them with the adapter.

    Their biases are frozen at zero (LayerwiseRerankerModel.freeze_fixed_parameters), which ZeRO-3's gather for a
    peft model leaves out: the adapter (the final one and the checkpoint's) still holds them, zero."""
    from rerankforge.inference import LayerwiseReranker

    model_dir = tiny_llm_dirs("llama")
    settings = dict(family="layerwise", lora_rank=4, lora_alpha=8, start_layer=1, self_distill_weight=0.5,
                    save_strategy="steps", save_steps=4)  # fmt: skip
    out = run_zero(tmp_path, model_dir, stage_file, **settings)
    assert not (out / "model.safetensors").exists()
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [k for k in adapter if "lora_B" in k]
    heads = sorted(k for k in adapter if ".heads." in k)
    assert heads == [f"base_model.model.heads.{k}.{n}" for k in (1, 2) for n in ("bias", "weight")]
    assert all(adapter[k].numel() > 0 for k in adapter)  # gathered, not a ZeRO-3 shard
    assert any(adapter[k].abs().sum() > 0 for k in lora_b)  # lora_B starts at zero: it trained
    # the heads started as the LM head's "Yes" row with a zero bias; the biases stay zero, the weights train
    spec = json.loads((out / "rerankforge.json").read_text())
    base = load_file(model_dir / "model.safetensors")
    lm_head = base["lm_head.weight" if "lm_head.weight" in base else "model.embed_tokens.weight"].float()
    start = lm_head[spec["yes_token_id"]]
    if spec["score"] == "yes_minus_no":
        start = start - lm_head[spec["no_token_id"]]
    for k in (1, 2):
        bias, weight = (adapter[f"base_model.model.heads.{k}.{n}"].float() for n in ("bias", "weight"))
        assert bias.shape == (1,) and torch.count_nonzero(bias) == 0, bias
        assert weight.shape == (1, start.numel()) and torch.isfinite(weight).all()
        moved = (weight[0] - start).abs().max().item()
        assert 1e-6 < moved < 0.1, moved  # trained from the "Yes" row: 4 steps at learning rate 1e-3
    checkpoint = load_file(out / "checkpoint-4" / "adapter_model.safetensors")
    assert set(checkpoint) == set(adapter) and all(torch.equal(checkpoint[k], adapter[k]) for k in adapter)
    reranker = LayerwiseReranker.from_pretrained(str(out), device="cpu")
    scores = reranker.compute_score([["where is the apple", "the apple is here"]] * 2, cutoff_layers=[1, 2])
    assert all(torch.isfinite(torch.tensor(s)).all() for s in scores)

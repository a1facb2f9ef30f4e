"""DDP on this CPU: `accelerate launch` with 2 gloo processes, through the recipe's accelerate config."""

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
from test_cross_encoder_training import toy_records

pytestmark = pytest.mark.distributed
WORKER = Path(__file__).with_name("ddp_worker.py")


FAMILY_SETTINGS = {
    "cross_encoder": {},
    "llm": dict(gradient_accumulation_steps=1, lora_rank=4, lora_alpha=8, lora_dropout=0.0),
    "layerwise": dict(
        gradient_accumulation_steps=1,
        lora_rank=4,
        lora_alpha=8,
        lora_dropout=0.0,
        start_layer=1,
        self_distill_weight=0.5,
    ),
}


def launch(
    tmp_path, model_dir, fail_rank: int | None = None, family: str = "cross_encoder"
) -> tuple[subprocess.CompletedProcess, Path]:
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(24))
    out = tmp_path / "out"
    recipe = dict(
        family=family, model_name_or_path=str(model_dir), train_data=[str(data)], output_dir=str(out),
        train_group_size=4, query_max_len=16, passage_max_len=32, per_device_train_batch_size=3,
        num_train_epochs=2, learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, disable_tqdm=True, dataloader_pin_memory=False, seed=0, **FAMILY_SETTINGS[family],
    )  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(WORKER.parent)}
    if fail_rank is not None:
        env["RERANKFORGE_TEST_FAIL_RANK"] = str(fail_rank)
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "recipes" / "accelerate" / "cpu_ddp.yaml"), str(WORKER), str(path),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    return result, out


@pytest.mark.parametrize("family", ["cross_encoder", "llm", "layerwise"])
def test_two_cpu_processes_train_to_identical_weights_with_the_global_batch_asked(
    tmp_path, tiny_bert_dir, tiny_llm_dirs, family
):
    model_dir = tiny_bert_dir if family == "cross_encoder" else tiny_llm_dirs("llama")
    result, out = launch(tmp_path, model_dir, family=family)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    facts = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert facts[0] == facts[1]
    # 24 queries, 2 processes x 3 per device = 6 per step: 4 steps an epoch, 2 epochs
    assert facts[0] == {"world_size": 2, "global_step": 8, "train_batch_size": 6}
    a, b = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    trained = (
        [
            k
            for k in a
            if "lora_B" in k or ("heads" in k and "modules_to_save" in k and k.endswith("weight"))
        ]  # peft's trained head copies (their biases stay zero: see LayerwiseRerankerModel.freeze_fixed_parameters)
        if family != "cross_encoder"
        else ["classifier.weight"]
    )
    assert all(torch.count_nonzero(a[k]) == 0 for k in a if "heads" in k and k.endswith("bias"))
    start = load_file(model_dir / "model.safetensors") if family == "cross_encoder" else {}
    assert trained and all(a[k].abs().sum() > 0 for k in trained)  # and they trained (lora_B starts at zero)
    if start:
        assert not torch.equal(a["classifier.weight"], start["classifier.weight"])
    logs = [json.loads((out / f"rank{r}_logs.json").read_text()) for r in (0, 1)]
    assert (
        len(logs[0]) == 8 and logs[0] == logs[1]
    )  # every logged number is the processes' mean, not rank 0's
    if family == "layerwise":  # each layer's share is gathered like loss, so the shares add up to it
        for entry in logs[0]:
            shares = [v for k, v in entry.items() if k.startswith("loss_layer")]
            assert len(shares) == 2 and entry["loss"] == pytest.approx(sum(shares), rel=1e-5)
    weights = "model.safetensors" if family == "cross_encoder" else "adapter_model.safetensors"
    assert (out / weights).is_file() and (out / "rerankforge.json").is_file()


def test_a_failing_process_ends_the_launch_instead_of_hanging(tmp_path, tiny_bert_dir):
    result, _ = launch(tmp_path, tiny_bert_dir, fail_rank=1)
    assert result.returncode != 0
    assert "rank 1 fails on purpose" in result.stdout + result.stderr

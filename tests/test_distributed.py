"""DDP on this CPU: `accelerate launch` with 2 gloo processes, through the recipe's accelerate config."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil  # accelerate's own dependency
import pytest
import torch
import yaml
from conftest import REPO, write_jsonl
from safetensors.torch import load_file
from test_cross_encoder_training import toy_records
from test_faults import wait_for_log_lines
from test_resume import losses, write_recipe

from rerankforge.trainer.checkpoints import (
    checkpoints_newest_first,
    incomplete_reason,
    latest_complete_checkpoint,
)
from rerankforge.trainer.preemption import EXIT_PREEMPTED

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


@contextlib.contextmanager
def cli_launch(recipe: str, *extra: str) -> Iterator[subprocess.Popen]:
    """`accelerate launch -m rerankforge.trainer` (the real command line, exit codes included) on 2 CPU
    processes; whatever still runs at the end (a process hung in a collective) is killed with its workers."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "recipes" / "accelerate" / "cpu_ddp.yaml"), "-m", "rerankforge.trainer",
        recipe, *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield run
    finally:
        if run.poll() is None:
            for process in [*psutil.Process(run.pid).children(recursive=True), psutil.Process(run.pid)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()  # the workers first: torchrun starts each in a session of its own
            run.wait()


def output_of(run: subprocess.Popen, timeout: float) -> str:
    try:
        return run.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the launch hung for {timeout} s") from None


def worker_pid(launcher: subprocess.Popen, rank: int) -> int:
    workers = [
        p
        for p in psutil.Process(launcher.pid).children(recursive=True)
        if p.environ().get("RANK") == str(rank)
    ]
    assert len(workers) == 1, workers
    return workers[0].pid


def test_sigterm_to_one_process_stops_both_after_the_same_step_with_one_checkpoint_and_resume_finishes(
    tmp_path, tiny_bert_dir
):
    max_steps = 20  # steps left after the signal: it lands mid-run even on a fast machine
    recipe, output_dir = write_recipe(tmp_path, tiny_bert_dir, "preempted")
    settings = yaml.safe_load(Path(recipe).read_text())
    settings.update(
        max_steps=max_steps, save_steps=1000, memory_check=False
    )  # the only checkpoint: SIGTERM's
    Path(recipe).write_text(yaml.safe_dump(settings))
    with cli_launch(recipe) as run:
        seen = wait_for_log_lines(run, 2)  # rank 0 has logged 2 steps
        # rank 1 alone: each process receives the signal at its own point in its step, and the request is
        # summed across processes at every step end: rank 0 must stop after the same step (not hang or go on)
        os.kill(worker_pid(run, 1), signal.SIGTERM)
        output = "".join(seen) + output_of(run, timeout=90)
    assert run.returncode == 1, output  # the launcher's code for failing workers (docs/faults.md)
    announced = re.findall(
        r"SIGTERM: saving a checkpoint after step (\d+)", output
    )  # rank 1 logs warnings too
    stopped = re.findall(r"stopped by SIGTERM after step (\d+): a complete checkpoint is in (\S+);", output)
    assert len(announced) == 2 and len(set(announced)) == 1, output
    assert len(stopped) == 2 and len(set(stopped)) == 1, output  # each process ended as preempted (exit 143)
    assert re.search(rf"exitcode\s*:\s*{EXIT_PREEMPTED}", output), output
    step = int(announced[0])
    assert 2 <= step < max_steps
    checkpoint = latest_complete_checkpoint(output_dir)
    assert checkpoint is not None and checkpoint.name == f"checkpoint-{step}" == Path(stopped[0][1]).name
    assert incomplete_reason(checkpoint) is None and checkpoints_newest_first(output_dir) == [checkpoint]
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert not (Path(output_dir) / "model.safetensors").exists()

    with cli_launch(recipe, "--resume_from_checkpoint", "auto") as resumed:
        output = output_of(resumed, timeout=300)
    assert resumed.returncode == 0, output
    assert f"resuming from {checkpoint}" in output
    assert [s for s, _ in losses(output_dir)] == list(range(1, max_steps + 1))  # no step lost or repeated
    assert (Path(output_dir) / "model.safetensors").is_file()

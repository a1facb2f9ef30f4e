"""A run killed with SIGKILL and resumed ends where an uninterrupted run ends; incomplete checkpoints are skipped."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import write_jsonl
from safetensors.torch import load_file
from test_cross_encoder_training import toy_records

from rerankforge.trainer.checkpoints import MARKER, incomplete_reason, latest_complete_checkpoint

MAX_STEPS = 40


def write_recipe(tmp_path, model_dir, name: str) -> tuple[str, str]:
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(24, n_negatives=8))
    output_dir = str(tmp_path / name)
    recipe = dict(
        family="cross_encoder",
        model_name_or_path=str(model_dir),
        train_data=[str(data)],
        output_dir=output_dir,
        train_group_size=4,
        query_max_len=16,
        passage_max_len=32,
        per_device_train_batch_size=2,
        max_steps=MAX_STEPS,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=3,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
    )  # fmt: skip  (BERT's dropout is on: the RNG state must be restored too)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path), output_dir


def launch(recipe: str, *extra: str, preexec_fn=None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "rerankforge.trainer", recipe, *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=preexec_fn,
    )  # fmt: skip


def wait_for_file(run: subprocess.Popen, path: str, timeout: float = 300) -> None:
    """Until ``path`` exists (a checkpoint's marker, say), the run ends, or ``timeout`` seconds pass."""
    deadline = time.time() + timeout
    while not os.path.exists(path) and run.poll() is None and time.time() < deadline:
        time.sleep(0.002)


def losses(output_dir: str) -> list[tuple[int, float]]:
    with open(os.path.join(output_dir, "trainer_state.json")) as handle:
        state = json.load(handle)
    return [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]


def test_a_killed_run_resumes_to_the_same_weights_and_losses(tmp_path, tiny_bert_dir):
    recipe, straight_dir = write_recipe(tmp_path, tiny_bert_dir, "straight")
    straight = launch(recipe)
    assert straight.wait(timeout=300) == 0, straight.stdout.read()

    recipe, killed_dir = write_recipe(tmp_path, tiny_bert_dir, "killed")
    run = launch(recipe)
    wait_for_file(run, os.path.join(killed_dir, "checkpoint-4", MARKER))
    run.send_signal(signal.SIGKILL)
    assert run.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert not os.path.exists(os.path.join(killed_dir, "model.safetensors"))  # it was cut off mid-way
    resumed_from = latest_complete_checkpoint(killed_dir)
    assert resumed_from is not None and int(resumed_from.name.split("-")[1]) >= 4

    resumed = launch(recipe, "--resume_from_checkpoint", "auto")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert f"resuming from {resumed_from}" in output

    a = load_file(os.path.join(straight_dir, "model.safetensors"))
    b = load_file(os.path.join(killed_dir, "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= 1e-6, name
    straight_losses, resumed_losses = losses(straight_dir), losses(killed_dir)
    assert [s for s, _ in resumed_losses] == list(range(1, MAX_STEPS + 1))
    assert [loss for _, loss in resumed_losses] == pytest.approx(
        [loss for _, loss in straight_losses], abs=1e-6
    )


def test_a_truncated_newest_checkpoint_is_skipped_with_a_warning(tmp_path, caplog):
    for step in (2, 4, 6):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 100)
        (folder / "optimizer.pt").write_bytes(b"y" * 50)
        if step != 6:  # checkpoint-6 was being written when the run was killed
            from rerankforge.trainer.checkpoints import mark_complete

            mark_complete(folder, step)
    (tmp_path / "checkpoint-4" / "optimizer.pt").write_bytes(
        b"y" * 10
    )  # and checkpoint-4 was truncated later
    with caplog.at_level(logging.WARNING):
        assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert "checkpoint-6: no completion marker" in caplog.text
    assert "optimizer.pt has 10 bytes, 50 were written" in caplog.text
    assert incomplete_reason(tmp_path / "checkpoint-2") is None


def test_resuming_from_an_incomplete_checkpoint_by_path_is_an_error(tmp_path, tiny_bert_dir):
    from rerankforge.trainer.cli import parse_config
    from rerankforge.trainer.training_run import resolve_resume

    recipe, _ = write_recipe(tmp_path, tiny_bert_dir, "run")
    (tmp_path / "half").mkdir()
    config = parse_config([recipe, "--resume_from_checkpoint", str(tmp_path / "half")])
    with pytest.raises(ValueError, match="no completion marker"):
        resolve_resume(config.training)


@pytest.mark.parametrize("family", ["llm", "layerwise"])
def test_lora_families_resume_adapter_heads_and_optimizer_to_the_same_end(tmp_path, tiny_llm_dirs, family):
    from rerankforge.data_tools import load_train_dataset
    from rerankforge.trainer.families import build_trainer, get_family

    data = write_jsonl(tmp_path / "train.jsonl", toy_records(12))
    extra = {"start_layer": 1, "self_distill_weight": 0.5} if family == "layerwise" else {}

    def run(name: str, resume: str | None = None):
        config = get_family(family).config_class(
            model_name_or_path=str(tiny_llm_dirs("llama")),
            output_dir=str(tmp_path / name),
            train_group_size=4,
            query_max_len=16,
            passage_max_len=32,
            per_device_train_batch_size=2,
            max_steps=6,
            learning_rate=5e-3,
            lora_rank=4,
            lora_alpha=8,
            lora_dropout=0.1,
            logging_steps=1,
            save_strategy="steps",
            save_steps=2,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            dataloader_pin_memory=False,
            seed=0,
            **extra,
        )  # fmt: skip  (LoRA dropout is on: the RNG state must come back too)
        import torch

        torch.manual_seed(0)
        trainer = build_trainer(config, load_train_dataset([str(data)], 4), None)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    straight = run("straight")
    checkpoint = str(tmp_path / "straight" / "checkpoint-2")
    assert incomplete_reason(checkpoint) is None
    resumed = run("resumed", resume=checkpoint)
    a = {n: p.detach() for n, p in straight.model.named_parameters() if p.requires_grad}
    b = {n: p.detach() for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert a.keys() == b.keys() and any("lora_" in n for n in a)
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= 1e-6, name
    straight_losses = [e["loss"] for e in straight.state.log_history if "loss" in e]
    resumed_losses = [e["loss"] for e in resumed.state.log_history if "loss" in e]
    assert resumed_losses == pytest.approx(straight_losses, abs=1e-6)


def test_rotation_never_deletes_the_newest_complete_checkpoint(tmp_path):
    from rerankforge.trainer.checkpoints import mark_complete, rotate_complete_checkpoints

    for step in (2, 4, 5, 6):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 10)
        if step != 6:  # a leftover, unmarked folder with a higher step (e.g. save_steps changed on resume)
            mark_complete(folder, step)
    removed = rotate_complete_checkpoints(tmp_path, 1, keep=[tmp_path / "checkpoint-5"])
    assert sorted(p.name for p in removed) == ["checkpoint-2", "checkpoint-4"]
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-5"


def test_resuming_a_finished_run_takes_no_step_past_max_steps(tmp_path, tiny_bert_dir):
    """A kill during the final save leaves checkpoint-40 complete: resuming it must not train step 41 (the
    Trainer resumes, then checks max_steps only after a step)."""
    recipe, output_dir = write_recipe(tmp_path, tiny_bert_dir, "finished")
    assert launch(recipe).wait(timeout=300) == 0
    before = load_file(os.path.join(output_dir, "model.safetensors"))
    os.remove(
        os.path.join(output_dir, "model.safetensors")
    )  # as if killed before the final model was written
    again = launch(recipe, "--resume_from_checkpoint", "auto")
    output = again.communicate(timeout=300)[0]
    assert again.returncode == 0, output
    assert "already holds all 40 steps" in output
    assert not os.path.exists(os.path.join(output_dir, f"checkpoint-{MAX_STEPS + 1}"))
    assert [s for s, _ in losses(output_dir)] == list(range(1, MAX_STEPS + 1))
    after = load_file(os.path.join(output_dir, "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)

"""Faults a run survives: NaN losses, SIGTERM, kill -9, a full disk; each must fail loudly and lose nothing."""

from __future__ import annotations

import os
import random
import re
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, write_jsonl
from safetensors.torch import load_file
from test_cross_encoder_training import toy_records
from test_resume import MAX_STEPS, launch, losses, wait_for_file, write_recipe

from rerankforge.trainer.checkpoints import (
    MARKER,
    checkpoints_newest_first,
    incomplete_reason,
    latest_complete_checkpoint,
)
from rerankforge.trainer.cli import EXIT_NON_FINITE, EXIT_OUT_OF_MEMORY, EXIT_WRITE_FAILED
from rerankforge.trainer.preemption import EXIT_PREEMPTED


def edit_recipe(recipe: str, **changes) -> str:
    data = yaml.safe_load(Path(recipe).read_text())
    data.update(changes)
    Path(recipe).write_text(yaml.safe_dump(data))
    return recipe


def assert_same_weights(dir_a: str, dir_b: str) -> None:
    a = load_file(os.path.join(dir_a, "model.safetensors"))
    b = load_file(os.path.join(dir_b, "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= 1e-6, name


def assert_same_losses(dir_a: str, dir_b: str) -> None:
    straight, resumed = losses(dir_a), losses(dir_b)
    assert [s for s, _ in resumed] == list(range(1, MAX_STEPS + 1))
    assert [v for _, v in resumed] == pytest.approx([v for _, v in straight], abs=1e-6)


def wait_for_log_lines(run: subprocess.Popen, count: int) -> list[str]:
    """Read the run's output until it has logged ``count`` training steps (one line per step)."""
    seen = []
    for line in run.stdout:
        seen.append(line)
        if sum("'loss'" in s for s in seen) >= count:
            return seen
    raise AssertionError("the run ended before it logged enough steps:\n" + "".join(seen))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_bert_dir) -> str:
    """The uninterrupted run every interrupted one must end at."""
    tmp_path = tmp_path_factory.mktemp("straight")
    recipe, output_dir = write_recipe(tmp_path, tiny_bert_dir, "straight")
    run = launch(recipe)
    assert run.wait(timeout=300) == 0, run.stdout.read()
    return output_dir


# --- numbers that go wrong ---


def test_a_diverging_run_stops_at_the_bad_step_and_saves_nothing(tmp_path, tiny_bert_dir):
    recipe, output_dir = write_recipe(tmp_path, tiny_bert_dir, "nan")
    edit_recipe(recipe, learning_rate=1e8, max_grad_norm=0.0, max_steps=12, save_steps=1)
    run = launch(recipe)
    output = run.communicate(timeout=300)[0]
    assert run.returncode == EXIT_NON_FINITE, output
    stopped = re.search(
        r"training stopped: step (\d+) has loss (\S+) and gradient norm (.+) \(of 12 steps\)", output
    )
    assert stopped is not None, output
    assert {"nan", "inf"} & {stopped.group(2), stopped.group(3)}, stopped.group(0)
    assert "learning rate 1e+08 is far above" in output
    assert "max_grad_norm is 0" in output
    assert not os.path.exists(os.path.join(output_dir, "model.safetensors"))
    # every checkpoint marked complete holds finite weights; one from before the bad step is named to resume from
    complete = [c for c in checkpoints_newest_first(output_dir) if incomplete_reason(c) is None]
    for checkpoint in complete:
        for name, tensor in load_file(str(checkpoint / "model.safetensors")).items():
            assert torch.isfinite(tensor).all(), f"{checkpoint}: {name} is not finite"
    if complete:
        assert f"the newest complete checkpoint is {complete[0]}" in output


class NanScores:
    """A fault injector: a forward hook that turns the scores of chosen optimizer steps into NaN."""

    def __init__(self, trainer, steps: set[int]):
        self.trainer, self.steps = trainer, steps

    def __call__(self, module, inputs, output):
        if module.training and self.trainer.state.global_step + 1 in self.steps:
            return output * float("nan")
        return output


def skip_trainer(tmp_path, tiny_bert_dir, bad_steps: set[int], **overrides):
    from rerankforge.data_tools import load_train_dataset
    from rerankforge.trainer.cross_encoder_config import CrossEncoderConfig
    from rerankforge.trainer.families import build_trainer

    data = write_jsonl(tmp_path / "train.jsonl", toy_records(24, n_negatives=8))
    settings = dict(
        model_name_or_path=str(tiny_bert_dir), output_dir=str(tmp_path / "out"),
        train_group_size=4, query_max_len=16, passage_max_len=32, per_device_train_batch_size=2, max_steps=10,
        learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True, dataloader_pin_memory=False, seed=0, nan_policy="skip",
    )  # fmt: skip
    settings.update(overrides)
    config = CrossEncoderConfig(**settings)
    torch.manual_seed(0)
    trainer = build_trainer(config, load_train_dataset([str(data)], 4), None)
    trainer.reranker.register_forward_hook(NanScores(trainer, bad_steps))
    weights_after: dict[int, dict[str, torch.Tensor]] = {}

    from transformers import TrainerCallback

    class RecordWeights(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            weights_after[state.global_step] = {
                n: p.detach().clone() for n, p in trainer.model.named_parameters()
            }

    trainer.add_callback(RecordWeights())
    return trainer, weights_after


def test_skip_drops_the_bad_steps_updates_and_counts_them(tmp_path, tiny_bert_dir):
    trainer, weights_after = skip_trainer(tmp_path, tiny_bert_dir, bad_steps={3, 7})
    trainer.train()
    assert trainer.nan_guard.skipped_steps == 2
    for step in range(2, 11):
        before, after = weights_after[step - 1], weights_after[step]
        moved = any(not torch.equal(before[n], after[n]) for n in before)
        assert moved == (step not in {3, 7}), f"step {step}"
    logged = [e.get("nan_skipped_steps", 0) for e in trainer.state.log_history if "loss" in e]
    assert logged == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_skip_stops_after_too_many_bad_steps_in_a_row(tmp_path, tiny_bert_dir):
    from rerankforge.trainer.nan_guard import NonFiniteTrainingError

    trainer, _ = skip_trainer(
        tmp_path, tiny_bert_dir, bad_steps=set(range(4, 11)), nan_max_consecutive_skips=3
    )
    with pytest.raises(NonFiniteTrainingError, match="3 steps in a row") as error:
        trainer.train()
    assert "the last, step 6" in str(error.value)


def test_nan_policy_is_checked_with_the_config():
    from rerankforge.trainer.cross_encoder_config import CrossEncoderConfig

    with pytest.raises(ValueError, match="nan_policy must be one of stop, skip"):
        CrossEncoderConfig(model_name_or_path="m", output_dir="o", nan_policy="ignore")


def test_skip_is_refused_under_deepspeed_set_by_the_accelerate_config(tmp_path, tiny_bert_dir, monkeypatch):
    """DeepSpeed's engine applies the update inside backward, before the norm is known: nothing to drop.
    Set by an accelerate config (no --deepspeed), the Trainer finds DeepSpeed in the accelerator's state,
    faked here."""
    from transformers import Trainer

    from rerankforge.trainer.nan_guard import SKIP_UNDER_DEEPSPEED

    original = Trainer.create_accelerator_and_postprocess

    def as_under_deepspeed(self):
        original(self)
        self.is_deepspeed_enabled = True

    monkeypatch.setattr(Trainer, "create_accelerator_and_postprocess", as_under_deepspeed)
    with pytest.raises(ValueError) as refused:
        skip_trainer(tmp_path, tiny_bert_dir, bad_steps=set())
    message = str(refused.value)
    assert message == SKIP_UNDER_DEEPSPEED
    assert (
        "nan_policy skip cannot drop an update under DeepSpeed" in message
        and "use nan_policy stop" in message
    )


def test_skip_is_refused_with_the_config_when_deepspeed_is_set(tmp_path):
    pytest.importorskip("deepspeed")  # transformers reads the DeepSpeed file only with deepspeed installed
    from rerankforge.trainer.cross_encoder_config import CrossEncoderConfig
    from rerankforge.trainer.nan_guard import SKIP_UNDER_DEEPSPEED

    zero2 = str(REPO / "recipes" / "deepspeed" / "zero2.json")
    settings = dict(model_name_or_path="m", output_dir=str(tmp_path), use_cpu=True,
                    report_to="none", deepspeed=zero2)  # fmt: skip
    with pytest.raises(ValueError) as refused:
        CrossEncoderConfig(**settings, nan_policy="skip")
    assert str(refused.value) == SKIP_UNDER_DEEPSPEED
    assert CrossEncoderConfig(**settings, nan_policy="stop").nan_policy == "stop"  # only skip is refused


def test_evaluation_reports_nonfinite_scores_and_collapse(caplog):
    from rerankforge.trainer.evaluation import RerankEvalSet

    eval_set = RerankEvalSet(
        queries={"q1": "a", "q2": "b"},
        corpus={"d1": "x", "d2": "y", "d3": "z"},
        candidates={"q1": {"d1": 3.0, "d2": 2.0}, "q2": {"d2": 3.0, "d3": 1.0}},
        qrels={"q1": {"d1": 1}, "q2": {"d3": 1}},
        top_k=2,
    )
    with caplog.at_level("WARNING"):
        metrics = eval_set.metrics({"q1": {"d1": float("nan"), "d2": 1.0}, "q2": {"d2": 1.0, "d3": 0.5}})
    assert (
        metrics["nonfinite_scores"] == 1 and metrics["ndcg@10"] != metrics["ndcg@10"]
    )  # NaN, not a low number
    assert "1 of 4 scores are NaN or infinite" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        metrics = eval_set.metrics({"q1": {"d1": 0.5, "d2": 0.5}, "q2": {"d2": 0.5, "d3": 0.5}})
    assert metrics["collapsed_queries"] == 1.0 and metrics["nonfinite_scores"] == 0
    assert "score collapse: 100% of queries" in caplog.text
    assert eval_set.first_stage_metrics()["collapsed_queries"] == 0.0


# --- preemption and crashes ---


def test_sigterm_saves_a_checkpoint_and_auto_resume_ends_as_the_uninterrupted_run(
    tmp_path, tiny_bert_dir, straight_run
):
    recipe, output_dir = write_recipe(tmp_path, tiny_bert_dir, "preempted")
    edit_recipe(recipe, save_steps=1000)  # the only checkpoint is the one SIGTERM asks for
    run = launch(recipe)
    seen = wait_for_log_lines(run, 7)
    run.send_signal(signal.SIGTERM)
    time.sleep(0.005)
    run.send_signal(
        signal.SIGTERM
    )  # the same request delivered twice (Slurm signals it, torchrun forwards it)
    output = "".join(seen) + run.communicate(timeout=300)[0]
    assert run.returncode == EXIT_PREEMPTED, output
    assert "SIGTERM: saving a checkpoint after step" in output
    checkpoint = latest_complete_checkpoint(output_dir)
    assert checkpoint is not None and f"a complete checkpoint is in {checkpoint}" in output
    assert 7 <= int(checkpoint.name.split("-")[1]) < MAX_STEPS
    assert not os.path.exists(os.path.join(output_dir, "model.safetensors"))

    resumed = launch(recipe, "--resume_from_checkpoint", "auto")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert f"resuming from {checkpoint}" in output
    assert_same_weights(straight_run, output_dir)
    assert_same_losses(straight_run, output_dir)


def test_ctrl_c_after_sigterm_ends_at_once_and_the_newest_complete_checkpoint_survives(
    tmp_path, tiny_bert_dir
):
    recipe, output_dir = write_recipe(tmp_path, tiny_bert_dir, "twice")
    edit_recipe(recipe, save_steps=1)  # a checkpoint is being written at almost every moment
    run = launch(recipe)
    wait_for_log_lines(run, 6)
    run.send_signal(signal.SIGTERM)
    time.sleep(0.02)
    run.send_signal(
        signal.SIGINT
    )  # Ctrl-C after SIGTERM: now (a SIGTERM a second after the first would be too)
    run.communicate(timeout=120)
    assert run.returncode == -signal.SIGINT
    newest = latest_complete_checkpoint(output_dir)
    assert newest is not None and incomplete_reason(newest) is None
    resumed = launch(recipe, "--resume_from_checkpoint", "auto")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0 and f"resuming from {newest}" in output, output


@pytest.mark.slow
def test_kill_9_at_five_random_points_each_resumes_to_the_uninterrupted_weights(
    tmp_path, tiny_bert_dir, straight_run
):
    chooser = random.Random(14)
    for attempt in range(5):
        recipe, output_dir = write_recipe(tmp_path, tiny_bert_dir, f"killed{attempt}")
        after_step, delay = chooser.randrange(2, MAX_STEPS - 4, 2), chooser.uniform(0.0, 0.3)
        run = launch(recipe)
        wait_for_file(run, os.path.join(output_dir, f"checkpoint-{after_step}", MARKER))
        time.sleep(delay)  # anywhere in the next steps: mid-step, mid-save, mid-rotation
        run.send_signal(signal.SIGKILL)
        assert run.wait(timeout=60) == -signal.SIGKILL, f"attempt {attempt}: the run ended before the kill"
        resumed = launch(recipe, "--resume_from_checkpoint", "auto")
        output = resumed.communicate(timeout=300)[0]
        assert resumed.returncode == 0, output
        assert "resuming from" in output, f"attempt {attempt} (after step {after_step} + {delay:.3f} s)"
        assert_same_weights(straight_run, output_dir)
        assert_same_losses(straight_run, output_dir)


def limit_file_size(pid: int, size: int) -> None:
    """The OS refuses any write that grows a file of process ``pid`` past ``size`` bytes (EFBIG): a disk
    that is full for the files a checkpoint writes, injected from outside the process."""
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (size, size))


def ignore_sigxfsz() -> None:
    signal.signal(
        signal.SIGXFSZ, signal.SIG_IGN
    )  # a write past the limit then fails with EFBIG, as ENOSPC would


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, tiny_bert_dir):
    recipe, output_dir = write_recipe(tmp_path, tiny_bert_dir, "full")
    run = launch(recipe, preexec_fn=ignore_sigxfsz)
    wait_for_file(run, os.path.join(output_dir, "checkpoint-2", MARKER))
    limit_file_size(run.pid, 64 * 1024)  # the next model.safetensors (~4 MB) cannot be written
    output = run.communicate(timeout=300)[0]
    assert run.returncode == EXIT_WRITE_FAILED, output
    assert "File too large" in output and "the partial files were removed" in output
    newest = latest_complete_checkpoint(output_dir)
    assert newest is not None and incomplete_reason(newest) is None
    assert f"the newest complete checkpoint, {newest}, is intact" in output
    assert all(
        incomplete_reason(c) is None for c in checkpoints_newest_first(output_dir)
    )  # no half-written one
    resumed = launch(recipe, "--resume_from_checkpoint", "auto")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0 and f"resuming from {newest}" in output, output


def test_a_full_disk_while_writing_the_final_model_leaves_no_partial_model(tmp_path, tiny_bert_dir):
    recipe, output_dir = write_recipe(tmp_path, tiny_bert_dir, "final")
    edit_recipe(recipe, save_strategy="no", max_steps=3)
    run = launch(recipe, preexec_fn=ignore_sigxfsz)
    limit_file_size(run.pid, 64 * 1024)  # before it writes anything big: the final model is the first
    output = run.communicate(timeout=300)[0]
    assert run.returncode == EXIT_WRITE_FAILED, output
    assert f"writing {output_dir} failed" in output and "File too large" in output
    assert not os.path.exists(os.path.join(output_dir, "model.safetensors"))
    assert not os.path.exists(os.path.join(output_dir, "rerankforge.json"))
    assert not os.path.exists(os.path.join(output_dir, ".final-model-partial"))


def test_a_step_that_will_not_fit_in_memory_exits_4_before_the_first_step(tmp_path, tiny_bert_dir):
    recipe, output_dir = write_recipe(tmp_path, tiny_bert_dir, "too_big")
    edit_recipe(recipe, memory_limit_gb=0.001)  # what this machine has free, as the check reads it
    run = launch(recipe)
    output = run.communicate(timeout=300)[0]
    assert run.returncode == EXIT_OUT_OF_MEMORY == 4, output
    assert "error: One training step will not fit in memory" in output
    assert "Stopped before the first step." in output and "--memory_check false skips this check" in output
    assert "'loss'" not in output  # no step ran
    assert not os.path.exists(output_dir) or not os.listdir(output_dir)  # nothing was written


def test_signal_handlers_are_restored_when_training_raises(tmp_path, tiny_bert_dir):
    from rerankforge.trainer.nan_guard import NonFiniteTrainingError

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    trainer, _ = skip_trainer(tmp_path, tiny_bert_dir, bad_steps={2}, nan_policy="stop")
    with pytest.raises(NonFiniteTrainingError, match="step 2 has loss nan"):
        trainer.train()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_only_a_refused_write_counts_as_a_full_disk():
    import errno

    from safetensors import SafetensorError

    from rerankforge.trainer.checkpoints import is_write_failure

    assert is_write_failure(OSError(errno.ENOSPC, "No space left on device"))
    assert is_write_failure(RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: file write failed"))  # fmt: skip
    assert is_write_failure(
        SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
    )
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert is_write_failure(wrapped)
    assert not is_write_failure(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_write_failure(RuntimeError("NCCL communicator was aborted"))
    assert not is_write_failure(OSError(errno.ENOENT, "No such file or directory"))


def test_a_checkpoint_of_overflowed_weights_is_refused_even_with_a_finite_loss(tmp_path, tiny_bert_dir):
    from transformers import TrainerCallback

    from rerankforge.trainer.nan_guard import NonFiniteTrainingError

    trainer, _ = skip_trainer(tmp_path, tiny_bert_dir, bad_steps=set(), nan_policy="stop", save_strategy="steps",
                              save_steps=3)  # fmt: skip

    class OverflowAWeight(TrainerCallback):  # as an fp16 weight overflowing after a finite update
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                with torch.no_grad():
                    next(p for p in trainer.model.parameters() if p.requires_grad).view(-1)[0] = float("inf")

    trainer.add_callback(OverflowAWeight())
    with pytest.raises(NonFiniteTrainingError, match="after step 3 some weights are NaN or infinite"):
        trainer.train()
    assert latest_complete_checkpoint(tmp_path / "out") is None

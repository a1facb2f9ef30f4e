"""The memory check before the first step: its estimate against a measured peak, stopping a run that will not fit,
leaving no trace, the out-of-memory message, and the LLM families' FlagEmbedding defaults."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import FE_TOY, REPO, write_jsonl

from rerankforge.data_tools import load_train_dataset
from rerankforge.inference.modeling.activation_checkpointing import (
    RENAMED,
    checkpointing_kwargs,
    checkpointing_on,
    flag_name,
    is_checkpointing,
)
from rerankforge.trainer.families import build_trainer
from rerankforge.trainer.memory_check import (
    GIB,
    MIN_HEADROOM,
    ActivationFit,
    MemoryEstimate,
    MemoryEstimateError,
    advice,
    cgroup_available,
    check_step_memory,
    explain_oom,
    out_of_memory_explained,
)
from rerankforge.trainer.run_config import RunConfig

LLM_TOY = FE_TOY / "llm_reranker" / "toy_finetune_data.jsonl"


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory, llm_tokenizer) -> Path:
    """A 3-layer, hidden-256 Llama: small weights, activations of hundreds of MB for a batch of long rows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(llm_tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)  # fmt: skip
    folder = tmp_path_factory.mktemp("wide-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    llm_tokenizer.save_pretrained(folder)
    return folder


def llm_config(tmp_path: Path, model_dir: Path, family: str = "llm", **overrides) -> RunConfig:
    settings = dict(
        model_name_or_path=str(model_dir), train_data=[str(LLM_TOY)], output_dir=str(tmp_path / "out"),
        train_group_size=4, query_max_len=16, passage_max_len=32, per_device_train_batch_size=2,
        gradient_accumulation_steps=1, num_train_epochs=1, learning_rate=5e-3, lora_rank=4, lora_alpha=8,
        lora_dropout=0.1, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
        dataloader_pin_memory=False, seed=0,
    )  # fmt: skip
    settings.update(overrides)
    return RunConfig.from_settings("llm_config", family=family, **settings)


def long_records(n: int, words: int = 400) -> list[dict]:
    """Queries and passages longer than any budget below, so every row is cut to the training lengths (the
    check's probe pads to them: real batches of short texts would be shorter than what it measures)."""
    import random

    rng = random.Random(0)
    vocab = ["apple", "river", "stone", "cloud", "music", "paper", "garden", "window", "silver", "orange",
             "forest", "bridge", "beach", "women"]  # fmt: skip

    def text() -> str:
        return " ".join(rng.choice(vocab) for _ in range(words))

    return [{"query": text(), "pos": [text()], "neg": [text() for _ in range(7)]} for _ in range(n)]


def build(config):
    torch.manual_seed(0)
    return build_trainer(
        config.training, load_train_dataset(config.data.train_data, config.training.train_group_size)
    )


# ---- (a) the estimate against a measured peak ---------------------------------------------------------------

# A clean process: build the trainer, run the check, then train a few steps and read the peak RSS those steps
# added (VmHWM after clear_refs, the heap trimmed first so freed memory cannot hide an allocation).
MEASURE = r"""
import ctypes, json, sys
import torch
from rerankforge.data_tools import load_train_dataset
from rerankforge.trainer.families import build_trainer, get_family
from rerankforge.trainer.memory_check import check_step_memory
from rerankforge.trainer.run_config import RunConfig

family, settings = sys.argv[1], json.loads(sys.argv[2])
run = RunConfig.from_settings("MEASURE", family=family, **settings)
torch.manual_seed(0)
trainer = build_trainer(run.training, load_train_dataset(run.data.train_data, run.training.train_group_size))
estimate = check_step_memory(trainer)

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

with torch.no_grad():  # the weights' file pages in memory first: the check counts them as loaded
    for p in trainer.model.parameters():
        p.sum()
ctypes.CDLL("libc.so.6").malloc_trim(0)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
trainer.train()
print(json.dumps({"estimate": estimate.beyond_loaded, "activations": estimate.activation_bytes,
                  "overhead": estimate.activations.overhead,
                  "gradients": estimate.gradients, "optimizer": estimate.optimizer_state,
                  "measured": status("VmHWM") - before, "steps": trainer.state.global_step}))
"""


def report(facts: dict) -> None:
    print(
        f"estimate {facts['estimate'] / 2**20:.0f} MiB (activations x{facts['overhead']:.2f} for the allocator), "
        f"measured {facts['measured'] / 2**20:.0f} MiB: {facts['estimate'] / facts['measured']:.2f}"
    )


def measure_in_subprocess(family: str, settings: dict, **env_vars: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env_vars}
    if not env_vars:  # glibc as users run it
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    command = [sys.executable, "-c", MEASURE, family, json.dumps(settings)]
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS is read from Linux's /proc")
@pytest.mark.parametrize(
    ("checkpointing", "env_vars"),
    [(False, {}), (True, {}), (False, {"MALLOC_MMAP_THRESHOLD_": "131072"})],
    ids=["plain", "gradient_checkpointing", "freed_memory_returned"],
)
def test_the_estimate_is_within_30_percent_of_the_measured_peak(
    tmp_path, wide_llama, checkpointing, env_vars
):
    """glibc's default keeps freed activations (the probe measures how much); its fixed threshold returns them."""
    data = write_jsonl(tmp_path / "train.jsonl", long_records(8))
    settings = dict(
        model_name_or_path=str(wide_llama), train_data=[str(data)], output_dir=str(tmp_path / "out"),
        train_group_size=8, query_max_len=64, passage_max_len=192, per_device_train_batch_size=4,
        gradient_accumulation_steps=1, max_steps=2, learning_rate=1e-4, lora_rank=8, lora_alpha=16,
        activation_checkpointing=checkpointing, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, disable_tqdm=True, dataloader_pin_memory=False, seed=0,
    )  # fmt: skip
    facts = measure_in_subprocess("llm", settings, **env_vars)
    assert facts["steps"] == 2
    if not checkpointing:  # activations dominate: hundreds of MB against a few MB of weights and state
        assert facts["activations"] > 200 * 2**20 > 20 * (facts["gradients"] + facts["optimizer"])
    ratio = facts["estimate"] / facts["measured"]
    report(facts)
    assert 0.7 <= ratio <= 1.3, facts


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS is read from Linux's /proc")
def test_a_full_fine_tune_counts_gradients_and_optimizer_state(tmp_path, minilm_path):
    """The MiniLM cross-encoder trained in full: 22.7M parameters' gradients and AdamW state are a real share."""
    data = write_jsonl(tmp_path / "train.jsonl", long_records(8))
    settings = dict(
        model_name_or_path=minilm_path, train_data=[str(data)], output_dir=str(tmp_path / "out"),
        train_group_size=8, query_max_len=32, passage_max_len=96, per_device_train_batch_size=2,
        gradient_accumulation_steps=1, max_steps=2, learning_rate=1e-5, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True, dataloader_pin_memory=False, seed=0,
    )  # fmt: skip
    facts = measure_in_subprocess("cross_encoder", settings)
    assert facts["gradients"] > 80 * 2**20 and facts["optimizer"] == 2 * facts["gradients"]
    ratio = facts["estimate"] / facts["measured"]
    report(facts)
    assert 0.7 <= ratio <= 1.3, facts


def test_activations_scale_each_moment_of_the_probes_and_take_the_peak():
    assert ActivationFit.from_probes((2, 4), (250, 450)).at(64) == 6450  # peaks alone: fitted linearly
    # a few rows peak late (a big parameter's gradient, fixed); many rows peak early (the activations)
    small, large = torch.tensor([100.0, 60.0, 300.0]), torch.tensor([200.0, 120.0, 310.0])
    fit = ActivationFit.from_timelines((2, 4), (small, large), held=(600, 620))
    assert fit.tensors_at(4) == 310 and fit.tensors_at(64) == 3200  # not the peaks' 310 + 60 x 5
    assert fit.overhead == pytest.approx(2.0) and fit.at(64) == 6400
    flat = ActivationFit.from_probes((2, 4), (400, 400))  # no growth measured: never below the probes
    assert flat.at(4) >= 400 and flat.at(64) >= 400


# ---- (b) a run that will not fit stops before the first step ----------------------------------------------


def test_a_run_over_the_limit_stops_before_the_first_step_with_what_to_change(tmp_path, wide_llama):
    data = write_jsonl(tmp_path / "train.jsonl", long_records(8))
    config = llm_config(tmp_path, wide_llama, train_data=[str(data)], query_max_len=32, passage_max_len=96,
                        per_device_train_batch_size=4, activation_checkpointing=False)  # fmt: skip
    trainer = build(config)
    # it fits this machine; one with half of what it needs (after headroom) it does not
    probe = check_step_memory(trainer)
    config.training.memory_limit_gb = (MIN_HEADROOM + probe.needed / 2) / GIB
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with pytest.raises(MemoryEstimateError) as raised:
        check_step_memory(trainer)
    message = str(raised.value)
    assert message.startswith("One training step will not fit in memory")
    for part in ("weights", "gradients", "optimizer state", "activations", "memory_limit_gb"):
        assert part in message
    assert (
        "--per_device_train_batch_size 1 --gradient_accumulation_steps 4 keeps the same 4 queries" in message
    )
    assert f"--{flag_name()} true (measured: activations" in message
    assert "--torch_dtype bfloat16" in message and "--memory_check false" in message
    assert trainer.state.global_step == 0
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())  # no step was taken
    assert raised.value.estimate is not None and not raised.value.estimate.fits


@pytest.mark.distributed
def test_under_ddp_every_process_stops_when_one_is_short_of_memory(tmp_path, tiny_llm_dirs):
    """Two CPU processes: rank 1's host is (made) too small; rank 0 fits, and stops too instead of hanging."""
    out = tmp_path / "out"
    out.mkdir()
    settings = dict(
        model_name_or_path=str(tiny_llm_dirs("llama")), train_data=[str(LLM_TOY)], output_dir=str(out),
        train_group_size=4, query_max_len=16, passage_max_len=32, per_device_train_batch_size=2,
        gradient_accumulation_steps=1, max_steps=2, lora_rank=4, lora_alpha=8, save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True, dataloader_pin_memory=False, seed=0,
    )  # fmt: skip
    worker = Path(__file__).with_name("memory_check_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(worker), "llm",
               json.dumps(settings), "1"]  # fmt: skip
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = (json.loads((out / f"memory_rank{r}.json").read_text()) for r in (0, 1))
    assert rank1["stopped"] and rank1["message"].startswith(
        "One training step will not fit in memory: 2 processes"
    )
    assert rank0["stopped"] and rank0["message"].startswith(
        "Another process of this run will not fit in memory"
    )
    assert rank0["steps"] == rank1["steps"] == 0


def test_the_check_can_be_turned_off(tmp_path, tiny_llm_dirs):
    config = llm_config(tmp_path, tiny_llm_dirs("llama"))
    config.training.memory_check = False
    config.training.memory_limit_gb = 1e-6
    assert check_step_memory(build(config)) is None


def per_row(nbytes: int) -> ActivationFit:
    return ActivationFit.from_probes((2, 4), (2 * nbytes, 4 * nbytes))


def estimate_for(**overrides) -> MemoryEstimate:
    fields = dict(
        device="cpu", processes=2, weights=GIB // 2, parameters=134_000_000, weight_dtype="float32",
        trainable=5_000_000, gradients=20 * 2**20, optimizer_state=40 * 2**20, optimizer="adamw_torch: 2 states",
        gradient_buckets=20 * 2**20, activations=per_row(GIB // 2), queries=8,
        group_size=8, accumulation=1, tokens=264, checkpointing=False, free=22 * GIB, free_source="test",
    )  # fmt: skip
    fields.update(overrides)
    return MemoryEstimate(**fields)


def test_advice_keeps_the_queries_per_step_and_says_what_each_setting_needs():
    estimate = estimate_for()  # 64 rows x 0.5 GiB x 2 processes: 64 GiB against 19.8 usable
    assert not estimate.fits
    lines = advice(estimate, per_row(GIB // 32), SimpleNamespace(torch_dtype="float32"))
    text = "\n".join(lines)
    assert "--per_device_train_batch_size 2 --gradient_accumulation_steps 4 keeps the same 8 queries" in text
    assert "--per_device_train_batch_size 1 --gradient_accumulation_steps 8" in text
    assert f"--{flag_name()} true (measured: activations 2.00 GiB instead of 32.00 GiB)" in text
    assert ": fits" in text
    hopeless = estimate_for(activations=per_row(4 * GIB))
    assert "none of the measured settings fits: even 1 query x 8 passages" in "\n".join(
        advice(hopeless, None, SimpleNamespace())
    )


def test_cgroup_limits_are_read_for_v2_and_v1(tmp_path):
    (tmp_path / "memory.max").write_text("8589934592\n")
    (tmp_path / "memory.current").write_text(str(6 * GIB))
    (tmp_path / "memory.stat").write_text(f"anon 123\ninactive_file {GIB}\n")
    assert cgroup_available(tmp_path) == 3 * GIB
    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup_available(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(4 * GIB))
    (v1 / "memory" / "memory.usage_in_bytes").write_text(str(3 * GIB))
    assert cgroup_available(v1) == GIB


# ---- (c) the probe leaves no trace --------------------------------------------------------------------------


def losses_and_weights(trainer) -> tuple[list[float], dict[str, torch.Tensor]]:
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return losses, {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", ["llm", "layerwise"])
def test_a_run_with_the_check_trains_exactly_as_one_without(tmp_path, tiny_llm_dirs, family):
    """LoRA dropout on (the RNG must come back), gradient checkpointing on (the Trainer's own switch comes after)."""
    extra = {"start_layer": 1, "self_distill_weight": 0.5} if family == "layerwise" else {}
    results = []
    for check in (True, False):
        config = llm_config(
            tmp_path / str(check), tiny_llm_dirs("llama"), family, num_train_epochs=2, **extra
        )
        trainer = build(config)
        if check:
            model = trainer.model
            training = [m.training for m in model.modules()]
            hooks = [len(m._forward_hooks) for m in model.modules()]
            assert check_step_memory(trainer).checkpointing
            assert [m.training for m in model.modules()] == training
            assert [len(m._forward_hooks) for m in model.modules()] == hooks
            assert not is_checkpointing(trainer.model)  # the Trainer switches it on in train()
            assert all(p.grad is None for p in model.parameters())
        results.append(losses_and_weights(trainer))
    (losses_on, weights_on), (losses_off, weights_off) = results
    assert len(losses_on) == 10 and losses_on == losses_off
    assert all(torch.equal(weights_on[n], weights_off[n]) for n in weights_off)


# ---- (d) out of memory in a step ----------------------------------------------------------------------------


def test_an_out_of_memory_error_in_a_step_says_what_to_change(tmp_path, tiny_llm_dirs):
    """CPU can only test the message: a CUDA OOM is what `out_of_memory_explained` turns into it."""
    trainer = build(llm_config(tmp_path, tiny_llm_dirs("llama"), per_device_train_batch_size=4,
                               activation_checkpointing=False, gradient_accumulation_steps=2))  # fmt: skip
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    message = explain_oom(error, trainer)
    assert message.startswith("Out of memory in a training step")
    assert "4 queries x 4 passages per micro-batch" in message and "Tried to allocate 2.00 GiB" in message
    assert (
        "--per_device_train_batch_size 1 --gradient_accumulation_steps 8 keeps the same 8 queries" in message
    )
    assert f"--{flag_name()} true" in message and "--torch_dtype bfloat16" in message
    check_step_memory(trainer)  # with an estimate made before training, its breakdown comes along
    with pytest.raises(MemoryEstimateError) as raised, out_of_memory_explained(trainer):
        raise error
    assert "activations" in str(raised.value) and raised.value.__cause__ is error
    assert raised.value.estimate is trainer.memory_estimate


# ---- the LLM families' defaults -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llm", "layerwise"])
def test_llm_families_default_to_flagembeddings_batch_accumulation_and_checkpointing(family):
    from rerankforge.trainer.cli import parse_config

    base = ["--family", family, "--model_name_or_path", "m", "--train_data", "d", "--output_dir", "o"]
    config = parse_config(base)
    assert (config.training.per_device_train_batch_size, config.training.gradient_accumulation_steps) == (
        1,
        16,
    )
    assert (
        checkpointing_on(config.training)
        and config.training.activation_checkpointing
        and config.training.gradient_checkpointing
    )
    assert checkpointing_kwargs(config.training) == {"use_reentrant": False}
    # after transformers 5.17, gradient_checkpointing is a deprecated alias; either way it wins over the default
    with pytest.warns(FutureWarning) if RENAMED else contextlib.nullcontext():
        off = parse_config([*base, "--gradient_checkpointing", "false"]).training
    assert not checkpointing_on(off) and not off.activation_checkpointing and not off.gradient_checkpointing
    assert not parse_config([*base, "--activation_checkpointing", "false"]).training.activation_checkpointing
    seed = parse_config(
        [*base, "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1"]
    ).training
    assert (seed.per_device_train_batch_size, seed.gradient_accumulation_steps) == (8, 1)

"""Training speed and peak memory on one device: a cross-encoder through rerankforge's real trainer, and LoRA steps
of an LLM reranker, scored rerankforge's way (the "Yes" logit of the last position only) or FlagEmbedding's way
(the LM head over the whole vocabulary at every position, then the "Yes" column of the last one).

Timed steps stop at the part's deadline (the warm-up steps and the first timed step always run), and the result
says how many were done. Names that differ between transformers releases (5.17's ``gradient_checkpointing*``
against the ``activation_checkpointing*`` of later ones) are looked up, not assumed.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from gpu_measure import (
    Deadline,
    peak_memory_kind,
    peak_memory_mb,
    release_memory,
    reset_peak_memory,
    synchronize,
)

LLM_WAYS = ("rerankforge", "flagembedding")
WAY_LABELS = {
    "rerankforge": "rerankforge (last position's Yes logit: logits_to_keep=1)",
    "flagembedding": "FlagEmbedding (all-vocabulary logits at every position, then last position's Yes)",
}


def write_groups(groups: list[dict[str, Any]], path: Path, count: int, negatives: int) -> Path:
    """The training JSONL: ``count`` questions that have ``negatives`` negatives (no negative drawn twice)."""
    chosen = [g for g in groups if len(g["neg"]) >= negatives][:count]
    path.write_text("".join(json.dumps(g) + "\n" for g in chosen), encoding="utf-8")
    return path


class StepDeadline:
    """Ends training at the part's deadline: after the warm-up and at least one timed step, a step starts only if
    one more, as long as the last, ends in time."""

    def __init__(self, deadline: Deadline, warmup_steps: int):
        self.deadline, self.warmup_steps = deadline, warmup_steps
        self.last_end: float | None = None
        self.stopped = False

    def after_step(self, global_step: int) -> bool:
        """Whether training ends after the step that just ended (``global_step`` steps done)."""
        now = time.perf_counter()
        step = 0.0 if self.last_end is None else now - self.last_end
        self.last_end = now
        if global_step > self.warmup_steps and not self.deadline.fits(step):
            self.stopped = True
        return self.stopped


def as_callback(stop: StepDeadline) -> Any:
    """A Trainer callback that asks ``stop`` after each optimizer step (transformers' Trainer is imported only
    when training starts, so planning the run never depends on it)."""
    from transformers import TrainerCallback

    class Callback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop.after_step(state.global_step):
                control.should_training_stop = True
            return control

    return Callback()


@contextlib.contextmanager
def trainer_with(callback: Any) -> Iterator[None]:
    """`train_rerankforge` exactly as it is, its Trainer given one more callback: the worker's path stays the one
    `training_speed.py` times."""
    import rerankforge_train_worker

    build = rerankforge_train_worker.build_trainer

    def build_with_callback(*args: Any, **kwargs: Any) -> Any:
        trainer = build(*args, **kwargs)
        trainer.add_callback(callback)
        return trainer

    with mock.patch.object(rerankforge_train_worker, "build_trainer", build_with_callback):
        yield


def cross_encoder_training(
    model_dir: Path, data: Path, output_dir: Path, device: torch.device, bf16: bool,
    batch_size: int, warmup_steps: int, steps: int, deadline: Deadline,
) -> dict[str, Any]:  # fmt: skip
    """`training_speed.py`'s command line (group 8, query 32 / passage 224), on this device, through
    `rerankforge_train_worker.train_rerankforge`: rerankforge-train's parser, data loading and Trainer."""
    import training_speed
    from rerankforge_train_worker import train_rerankforge

    arguments = training_speed.training_arguments(
        model_dir, data, warmup_steps + steps, bf16, learning_rate=2e-5, seed=42
    )
    # later options win: this device, and a batch that keeps a GPU busy
    arguments += ["--use_cpu", str(device.type == "cpu"), "--per_device_train_batch_size", str(batch_size)]
    arguments += ["--output_dir", str(output_dir)]
    stop = StepDeadline(deadline, warmup_steps)
    reset_peak_memory(device)
    # the Trainer's log lines go to stderr; our progress lines stay on stdout
    with contextlib.redirect_stdout(sys.stderr), trainer_with(as_callback(stop)):
        run = json.loads(train_rerankforge(arguments))
    peak = peak_memory_mb(device)
    groups_per_s = training_speed.groups_per_second(run["step_times"], warmup_steps, batch_size)
    timed_steps = len(run["step_times"]) - warmup_steps
    release_memory(device)
    return {
        "model": str(model_dir.name),
        "precision": "bf16 autocast (fp32 weights)" if bf16 else "fp32",
        "batch_groups": batch_size,
        "group_size": training_speed.GROUP_SIZE,
        "query_max_len": training_speed.QUERY_MAX_LEN,
        "passage_max_len": training_speed.PASSAGE_MAX_LEN,
        "warmup_steps": warmup_steps,
        "timed_steps": timed_steps,
        "steps_planned": steps,
        "stopped_at_deadline": stop.stopped,
        "steps_per_s": groups_per_s / batch_size,
        "groups_per_s": groups_per_s,
        "peak_memory_mb": peak,
        "peak_memory_kind": peak_memory_kind(device),
        "real_tokens_per_step": statistics.mean(run["real_tokens"][warmup_steps:]),
        "padded_tokens_per_step": statistics.mean(
            rows * length
            for rows, length in zip(
                run["rows_per_batch"][warmup_steps:], run["padded_lengths"][warmup_steps:], strict=True
            )
        ),  # fmt: skip
        "losses": run["losses"],
        "attention": run["attn_implementation"],
    }


@dataclass(frozen=True)
class LoraVariant:
    way: str  # "rerankforge" or "flagembedding"
    attention: str  # "sdpa" or "flash_attention_2"
    checkpointing: bool

    def label(self) -> str:
        return f"{self.way}, {self.attention}, checkpointing {'on' if self.checkpointing else 'off'}"


def lora_variants(attentions: list[str]) -> list[LoraVariant]:
    """Both ways, for each attention kernel, with and without gradient checkpointing."""
    return [
        LoraVariant(way, attention, checkpointing)
        for attention in attentions
        for checkpointing in (True, False)
        for way in LLM_WAYS
    ]


def llm_config(variant: LoraVariant, output_dir: Path, device: torch.device, bf16: bool):
    """rerankforge's LLM family config for this variant (its LoRA, prompt, score and loss defaults)."""
    from rerankforge.inference.modeling.activation_checkpointing import flag_name
    from rerankforge.trainer.llm_config import LLMRerankerConfig

    checkpointing = {flag_name(): variant.checkpointing}
    return LLMRerankerConfig(
        output_dir=str(output_dir),
        model_name_or_path="random-weight decoder",
        torch_dtype="bfloat16" if bf16 else "float32",
        bf16=bf16,
        attn_implementation=variant.attention,
        **checkpointing,
        use_cpu=device.type == "cpu",
        report_to="none",
    )


def llm_batches(tokenizer: Any, groups: list[dict[str, Any]], config: Any, batch_groups: int, count: int):
    """``count`` left-padded batches of ``batch_groups`` groups, built by rerankforge's LLM collator."""
    from rerankforge.data_tools.collators import LLMCollator
    from rerankforge.data_tools.grouping import TrainGroup
    from rerankforge.inference.modeling.pair_encoding import PairLengths

    lengths = PairLengths(
        config.query_max_len, config.passage_max_len, config.query_max_len + config.passage_max_len
    )
    collator = LLMCollator.for_lengths(tokenizer, lengths)
    size = config.train_group_size
    usable = [g for g in groups if len(g["neg"]) >= size - 1]
    if len(usable) < batch_groups * count:
        raise ValueError(f"{len(usable)} questions with {size - 1} negatives; {batch_groups * count} needed")
    chosen = [TrainGroup(g["query"], g["pos"] + g["neg"][: size - 1]) for g in usable]
    return [collator(chosen[i * batch_groups : (i + 1) * batch_groups]) for i in range(count)]


def lora_model(variant: LoraVariant, config: Any, shape: Any, tokenizer: Any, device: torch.device):
    """The family model around a random decoder, with rerankforge's LoRA and checkpointing set-up."""
    from gpu_models import decoder_model

    from rerankforge.inference.modeling.activation_checkpointing import (
        checkpointing_kwargs,
        enable_checkpointing,
    )
    from rerankforge.inference.modeling.llm import DTYPES, LLMRerankerModel, prepare_for_training

    backbone = decoder_model(shape, tokenizer, DTYPES[config.torch_dtype], device, variant.attention)
    backbone.config.use_cache = False  # as for_training does: no generation in training
    model = LLMRerankerModel.for_training_from(
        backbone, LLMRerankerModel.training_spec_fields(config, tokenizer), config
    )
    wrapped = prepare_for_training(model, config)
    if variant.checkpointing:
        # the config's default: non-reentrant (the frozen embeddings pass no gradient)
        enable_checkpointing(backbone, checkpointing_kwargs(config) or {"use_reentrant": False})
    wrapped.train()
    return wrapped, model


def scorer_for(way: str, wrapped: Any, model: Any) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """The scores a LoRA step trains on: rerankforge's forward, or FlagEmbedding's full-logits read-out."""
    if way == "rerankforge":
        return lambda batch: wrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    yes = model.spec.yes_token_id

    def flagembedding(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # FlagEmbedding 1.4.2's CrossDecoderModel.encode: the whole LM output, then one column of its last row
        out = model.backbone(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
        return out.logits[:, -1, yes].contiguous()

    return flagembedding


def lora_step_times(
    score: Callable[[dict[str, torch.Tensor]], torch.Tensor], wrapped: Any, config: Any,
    batches: list[dict[str, Any]], device: torch.device, warmup_steps: int, steps: int, deadline: Deadline,
) -> list[float]:  # fmt: skip
    """Seconds of each timed optimizer step (forward, rerankforge's loss, backward, AdamW), after a warm-up; past
    the first timed step, a step starts only if one more, as long as the last, ends before the deadline."""
    objective = config.build_objective().to(device)
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)
    times: list[float] = []
    for step in range(warmup_steps + steps):
        if step > warmup_steps and not deadline.fits(times[-1]):
            print(f"  deadline: {step - warmup_steps} of {steps} timed steps done", flush=True)
            break
        batch = batches[step % len(batches)]
        inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        synchronize(device)
        start = time.perf_counter()
        with autocast:
            scores = score(inputs)
        loss, _ = objective(scores.float().view(-1, batch["group_size"]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times[warmup_steps:]


def lora_variant_run(
    variant: LoraVariant, shape: Any, tokenizer: Any, groups: list[dict[str, Any]], output_dir: Path,
    device: torch.device, bf16: bool, batch_groups: int, warmup_steps: int, steps: int, deadline: Deadline,
) -> dict[str, Any]:  # fmt: skip
    """One variant: a fresh model (same seed), its own peak memory, median step time."""
    config = llm_config(variant, output_dir, device, bf16)
    batches = llm_batches(tokenizer, groups, config, batch_groups, count=min(4, warmup_steps + steps))
    wrapped, model = lora_model(variant, config, shape, tokenizer, device)
    reset_peak_memory(device)
    times = lora_step_times(
        scorer_for(variant.way, wrapped, model),
        wrapped,
        config,
        batches,
        device,
        warmup_steps,
        steps,
        deadline,
    )
    peak = peak_memory_mb(device)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    parameters = sum(p.numel() for p in wrapped.parameters()) - trainable  # the base model's (tied: once)
    del wrapped, model
    release_memory(device)
    median = statistics.median(times)
    return {
        "way": variant.way,
        "attention": variant.attention,
        "checkpointing": variant.checkpointing,
        "step_seconds": times,
        "timed_steps": len(times),
        "steps_planned": steps,
        "stopped_at_deadline": len(times) < steps,
        "step_s_median": median,
        "steps_per_s": 1.0 / median,
        "peak_memory_mb": peak,
        "peak_memory_kind": peak_memory_kind(device),
        "rows_per_step": int(batches[0]["input_ids"].shape[0]),
        "padded_tokens_per_step": statistics.mean(int(b["input_ids"].numel()) for b in batches),
        "real_tokens_per_step": statistics.mean(int(b["attention_mask"].sum()) for b in batches),
        "parameters": parameters,
        "trainable_parameters": trainable,
        "lora_rank": config.lora_rank,
    }

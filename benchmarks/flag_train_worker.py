"""Runs inside the FlagEmbedding environment: one training run of FlagEmbedding 1.4.2's encoder-only reranker
fine-tuning (`FlagEmbedding.finetune.reranker.encoder_only.base`), timed step by step.

    /path/to/flag-venv/bin/python benchmarks/flag_train_worker.py --model_name_or_path M --train_data D ...

The arguments are FlagEmbedding's own command line (its three argument dataclasses, parsed by HfArgumentParser as
its ``__main__`` does), and the run goes through its Runner, dataset, collator, model wrapper and Trainer, so the
measured path is the one its users run. Only the final ``save_model`` of ``Runner.run`` is left out: writing the
model is not training speed, and rerankforge's worker leaves it out too; ``--save-model-to DIR`` (this
worker's own option) saves it as Runner.run would, for `benchmarks/training_quality.py`.

Prints ONE JSON line to stdout (everything else goes to stderr): per-step end times, per-step losses, peak RSS,
padded and real token counts per batch, the attention implementation, a checksum of the starting weights, versions.

Never imports rerankforge. `benchmarks/rerankforge_train_worker.py` imports `StepTimer`, `BatchShapeRecorder` and
`result_line` from here, so both tools are measured by the same code.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from transformers import TrainerCallback


def peak_rss_mb() -> float:
    """The process's peak resident set so far (Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (all cores, all processes), from /proc/stat.

    Against the worker's own CPU time this tells how much other processes ran during the timed steps: on a
    shared 2-core machine that decides whether a wall-clock speed can be trusted.
    """
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class StepTimer(TrainerCallback):
    """Records when each optimizer step ends and each step's logged loss (needs logging_steps 1).

    With each end time go the process's CPU time (all its threads) and the machine's busy CPU time. The peak
    RSS is also read at the last step's end, before anything a tool does after training (plots, saving) can
    raise it.
    """

    def __init__(self) -> None:
        self.step_times: list[float] = []
        self.cpu_times: list[float] = []
        self.machine_busy: list[float | None] = []
        self.losses: dict[int, float] = {}
        self.peak_rss_mb_training: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        self.step_times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())
        self.machine_busy.append(machine_busy_seconds())
        if state.global_step >= state.max_steps:
            self.peak_rss_mb_training = peak_rss_mb()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses[state.global_step] = float(logs["loss"])


def input_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """The model inputs of a collated batch: at the top level (rerankforge) or under ``pair`` (FlagEmbedding)."""
    return batch.get("pair", batch)


class BatchShapeRecorder:
    """Wraps a data collator to record each batch's padded length and real (unpadded) token count.

    Padding decides how much work a step does, so the two tools' token counts are part of the result.
    """

    def __init__(self, collator: Callable[[list[Any]], dict[str, Any]]):
        self.collator = collator
        self.padded_lengths: list[int] = []
        self.rows: list[int] = []
        self.real_tokens: list[int] = []

    def __call__(self, features: list[Any]) -> dict[str, Any]:
        batch = self.collator(features)
        inputs = input_tensors(batch)
        rows, length = inputs["input_ids"].shape
        self.rows.append(int(rows))
        self.padded_lengths.append(int(length))
        self.real_tokens.append(int(inputs["attention_mask"].sum()))
        return batch


def parameter_checksum(model: Any) -> float:
    """Sum of |w| over every parameter in float64: equal sums show both tools start from the same weights."""
    return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


def result_line(
    tool: str,
    timer: StepTimer,
    shapes: BatchShapeRecorder,
    model_config: Any,
    checksum: float,
    versions: dict[str, str],
) -> str:
    """The worker's one JSON line: what the orchestrator turns into groups/s, RSS and the loss table."""
    import torch

    steps = len(timer.step_times)
    return json.dumps(
        {
            "tool": tool,
            "step_times": timer.step_times,
            "cpu_times": timer.cpu_times,
            "machine_busy": timer.machine_busy,
            "losses": [timer.losses.get(step) for step in range(1, steps + 1)],
            "peak_rss_mb": timer.peak_rss_mb_training,
            "peak_rss_mb_at_exit": peak_rss_mb(),
            "padded_lengths": shapes.padded_lengths[:steps],
            "rows_per_batch": shapes.rows[:steps],
            "real_tokens": shapes.real_tokens[:steps],
            "attn_implementation": getattr(model_config, "_attn_implementation", None),
            "start_checksum": checksum,
            "threads": torch.get_num_threads(),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": __import__("transformers").__version__,
                **versions,
            },
        }
    )


def pop_option(argv: list[str], name: str) -> tuple[list[str], str | None]:
    """``argv`` without ``name VALUE`` (an option of this worker, not of FlagEmbedding's parser), and VALUE."""
    if name not in argv:
        return argv, None
    index = argv.index(name)
    return argv[:index] + argv[index + 2 :], argv[index + 1]


def train_flagembedding(argv: Sequence[str]) -> str:
    """Build FlagEmbedding's runner from its own argument classes, train, and return the result line."""
    from importlib.metadata import version

    from FlagEmbedding.abc.finetune.reranker import (
        AbsRerankerDataArguments,
        AbsRerankerModelArguments,
        AbsRerankerTrainingArguments,
    )
    from FlagEmbedding.finetune.reranker.encoder_only.base import EncoderOnlyRerankerRunner
    from transformers import HfArgumentParser

    argv, save_to = pop_option(list(argv), "--save-model-to")
    parser = HfArgumentParser(
        (AbsRerankerModelArguments, AbsRerankerDataArguments, AbsRerankerTrainingArguments)
    )
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    runner = EncoderOnlyRerankerRunner(
        model_args=model_args, data_args=data_args, training_args=training_args
    )
    trainer = runner.trainer
    timer, shapes = StepTimer(), BatchShapeRecorder(trainer.data_collator)
    trainer.data_collator = shapes  # the dataloader is built inside train(), from this attribute
    trainer.add_callback(timer)
    base_model = runner.model.model  # CrossEncoderModel wraps the sequence classifier
    checksum = parameter_checksum(base_model)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if save_to:  # what Runner.run saves (the model, then the tokenizer), for the quality benchmark
        trainer.save_model(save_to)
        runner.tokenizer.save_pretrained(save_to)
    versions = {"FlagEmbedding": version("FlagEmbedding"), "datasets": version("datasets")}
    return result_line("flagembedding", timer, shapes, base_model.config, checksum, versions)


def worker_main(train: Callable[[Sequence[str]], str]) -> None:
    """Both training workers' entry point: the Trainer prints its logs to stderr; stdout carries only the
    result line."""
    with contextlib.redirect_stdout(sys.stderr):
        line = train(sys.argv[1:])
    print(line, flush=True)


if __name__ == "__main__":
    worker_main(train_flagembedding)

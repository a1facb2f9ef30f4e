"""One training run, start to finish: data, evaluation before, training, evaluation after, save."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerState, set_seed
from transformers.trainer_utils import TrainOutput

from rerankforge.data_tools.data_names import data_path, hub_dataset_id
from rerankforge.data_tools.ir_data import (
    IRDataset,
    load_ir_dataset,
    load_ir_split,
    sample_queries,
    split_by_group,
)
from rerankforge.data_tools.mining import mine_from_dataset, write_jsonl
from rerankforge.data_tools.mining_arguments import MiningArguments
from rerankforge.data_tools.sources import load_train_dataset
from rerankforge.data_tools.teacher_scoring import load_teacher
from rerankforge.inference.modeling.calibration import Calibration
from rerankforge.inference.modeling.files import atomic_write_text
from rerankforge.inference.modeling.folder_checks import check_model_folder
from rerankforge.inference.modeling.fusion import Fusion
from rerankforge.inference.modeling.layerwise import LEGACY_HEADS_FILE
from rerankforge.inference.modeling.sources import resolve_model_path
from rerankforge.inference.modeling.spec import SPEC_FILENAME
from rerankforge.trainer.calibration import calibrate_held_out, save_calibration, write_report
from rerankforge.trainer.checkpoints import (
    WRITE_ERRORS,
    CheckpointWriteError,
    incomplete_reason,
    is_write_failure,
    latest_complete_checkpoint,
    write_failure_message,
)
from rerankforge.trainer.config import RerankerConfig
from rerankforge.trainer.data_arguments import DataArguments
from rerankforge.trainer.evaluation import RerankEvalSet
from rerankforge.trainer.families import build_trainer
from rerankforge.trainer.fusion_choice import below_first_stage, choose_on_split, save_fusion
from rerankforge.trainer.memory_check import check_step_memory, out_of_memory_explained
from rerankforge.trainer.output_card import push_output, write_output_card
from rerankforge.trainer.report import layer_table, metric_table
from rerankforge.trainer.run_config import RunConfig

logger = logging.getLogger(__name__)
MINED_TRAIN_FILE = Path("data") / "train.jsonl"


def resolve_resume(config: RerankerConfig) -> str | None:
    """``auto``: the newest complete checkpoint in output_dir (none yet: start fresh); a path must be complete."""
    if config.resume_from_checkpoint is None:
        return None
    if config.resume_from_checkpoint == "auto":
        latest = latest_complete_checkpoint(config.output_dir)
        if latest is None:
            return None
        logger.info("resuming from %s", latest)
        check_model_folder(latest)  # sizes match the marker; a damaged header still shows here
        return refuse_legacy_heads(str(latest))
    reason = incomplete_reason(config.resume_from_checkpoint)
    if reason is not None:
        raise ValueError(f"resume_from_checkpoint {config.resume_from_checkpoint}: {reason}")
    check_model_folder(config.resume_from_checkpoint)
    return refuse_legacy_heads(config.resume_from_checkpoint)


def refuse_legacy_heads(checkpoint: str) -> str:
    """A layerwise checkpoint from before the heads moved into the weights cannot resume: the Trainer restores
    the weights alone, so the heads (and their optimizer state) would silently start again."""
    if (Path(checkpoint) / LEGACY_HEADS_FILE).is_file():
        raise ValueError(
            f"resume_from_checkpoint {checkpoint}: a layerwise checkpoint written by an earlier rerankforge (its heads "
            f"are in {LEGACY_HEADS_FILE}); it cannot resume, but a new run continues from it with "
            f"adapter_name_or_path: {checkpoint} (adapter and heads)"
        )
    return checkpoint


@dataclass(frozen=True)
class TrainingData:
    """What a run trains and evaluates on, once read or mined: the training JSONL files (given, or written into
    the output folder by mining) and the evaluation set (None: no evaluation data)."""

    train_files: list[str]
    eval_set: RerankEvalSet | None


def prepare_data(run: RunConfig) -> TrainingData:
    """Mine training groups from ``ir_data`` when no ``train_data`` is given; build the evaluation set."""
    data = run.data
    held_out = None
    train_files = list(data.train_data or [])
    if data.ir_data:
        train_part, held_out = ir_data_parts(data)
        logger.info(
            "%s: %d training queries (%d passages), %d held-out queries (%d passages)",
            data.ir_data, len(train_part.queries), len(train_part.corpus),
            len(held_out.queries), len(held_out.corpus),
        )  # fmt: skip
        if data.mines:
            train_files = [str(mine_training_file(run, train_part))]
    if data.eval_data:
        held_out = load_ir_split(data.eval_data, data.eval_split, data.eval_fraction, data.split_seed)
    eval_set = None
    if held_out is not None:
        eval_set = RerankEvalSet.from_dataset(
            held_out, data.eval_top_k, data.eval_max_queries, data.split_seed
        )
    return TrainingData(train_files, eval_set)


def run_settings(run: RunConfig, prepared: TrainingData) -> dict[str, Any]:
    """The data settings (and, when the run mined, the mining options and the file it wrote) as recorded in
    ``training_args.json`` and the W&B config."""
    settings: dict[str, Any] = dataclasses.asdict(run.data)
    if run.data.mines:
        settings |= dataclasses.asdict(run.mining) | {"mined_train_data": prepared.train_files}
    return settings


def mine_training_file(run: RunConfig, train_part: IRDataset) -> Path:
    """Mine hard negatives for ``train_part``'s queries into the output folder; one process mines (even across
    nodes sharing a disk), the others read its file."""
    config, mining = run.training, run.mining
    path = Path(config.output_dir) / MINED_TRAIN_FILE
    with config.main_process_first(local=False, desc="mining hard negatives"):
        if config.process_index == 0 or not path.is_file():
            records, _ = mine_from_dataset(
                sample_queries(train_part, mining.mine_max_queries, config.seed),
                mining.options(config.seed),
                mining.mine_retriever,
                teacher=mining_teacher(config, mining),
                dense_model=mining.mine_dense_model,
            )
            write_jsonl(records, path)
    return path


def ir_data_parts(config: DataArguments) -> tuple[IRDataset, IRDataset]:
    """Training and evaluation parts of ``ir_data``: its own qrels splits when ``ir_eval_split`` names one
    (a collection's train and test qrels), else a random hold-out by article or query."""
    if not config.ir_eval_split:
        return split_by_group(
            load_ir_dataset(config.ir_data, config.ir_split), config.eval_fraction, config.split_seed
        )
    if hub_dataset_id(config.ir_data) is None and not data_path(config.ir_data).is_dir():
        raise ValueError(
            f"ir_eval_split needs a BEIR folder with qrels splits; {config.ir_data} is not a folder"
        )
    train_part = load_ir_dataset(config.ir_data, config.ir_split)
    held_out = load_ir_dataset(config.ir_data, config.ir_eval_split)
    train_part = train_part.subset(train_part.judged_queries(), f"{train_part.name}")
    held_out = held_out.subset(held_out.judged_queries(), f"{held_out.name}")
    shared = set(train_part.queries) & set(held_out.queries)
    if shared:
        raise ValueError(
            f"{config.ir_data}: qrels splits {config.ir_split} and {config.ir_eval_split} share {len(shared)} "
            f"queries (e.g. {sorted(shared)[:3]}): a model would be evaluated on queries it trained on"
        )
    return train_part, held_out


def mining_teacher(config: RerankerConfig, mining: MiningArguments):
    """``mine_teacher`` as a function from pairs to raw scores, in bf16 when the run trains in bf16."""
    if not mining.mine_teacher:
        return None

    dtype = torch.bfloat16 if config.bf16 else torch.float32
    device = "cpu" if config.use_cpu else None
    max_length = config.query_max_len + config.passage_max_len
    return load_teacher(mining.mine_teacher, device, dtype, config.per_device_eval_batch_size, max_length)


def final_evaluation(trainer) -> dict[str, float]:
    """The trained model's metrics: reused when the Trainer just evaluated this very model, else measured."""
    last = next((e for e in reversed(trainer.state.log_history) if "eval_ndcg@10" in e), None)
    if (
        last is not None
        and last.get("step") == trainer.state.global_step
        and not trainer.args.load_best_model_at_end
    ):
        return {k: v for k, v in last.items() if k.startswith("eval_")}
    return trainer.evaluate()


STAGING_DIR = ".final-model-partial"


def save_final_model(trainer, output_dir: str | Path) -> None:
    """Write the final model into a staging folder, then move its files into ``output_dir``, `rerankforge.json`
    last: a kill or a full disk while writing leaves no half-written model there (a folder holding
    `rerankforge.json` is complete), and a failure removes the staging folder."""
    output_dir = Path(output_dir)
    staging = output_dir / STAGING_DIR
    if trainer.args.should_save:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        trainer.save_model(str(staging), _internal_call=True)  # no Hub push from the staging folder
        trainer.finish_saving(staging)
    except WRITE_ERRORS as error:
        if not is_write_failure(error):
            raise
        if trainer.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointWriteError(write_failure_message(output_dir, error, output_dir)) from error
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        publish(staging, output_dir)


def publish(staging: Path, output_dir: Path) -> None:
    """Move every entry of ``staging`` into ``output_dir`` (same filesystem: each move is a rename)."""
    (output_dir / SPEC_FILENAME).unlink(missing_ok=True)  # the folder is incomplete until the new one lands
    entries = sorted(staging.iterdir(), key=lambda p: p.name == SPEC_FILENAME)
    for entry in entries:
        target = output_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()


def finished_checkpoint(trainer, resume: str | None) -> TrainerState | None:
    """The checkpoint's state when it already holds every step of the run (a kill during the final save, or a
    rerun of a finished one). transformers would resume it and take one more step before checking max_steps
    (step 41 of 40: at the schedule's zero learning rate, or a real update under a constant one)."""
    if resume is None or trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        return None  # those engines restore their own state inside train(): left to it
    state = TrainerState.load_from_json(os.path.join(resume, "trainer_state.json"))
    planned = trainer.args.max_steps if trainer.args.max_steps > 0 else state.max_steps
    return state if planned and state.global_step >= planned else None


def train_or_finish(trainer, resume: str | None) -> TrainOutput:
    """``trainer.train``, or, for a checkpoint that already holds the whole run, its weights and state as they
    are (nothing left to train)."""
    finished = finished_checkpoint(trainer, resume)
    if finished is None:
        with out_of_memory_explained(trainer):  # a CUDA OOM says what to change, not only a traceback
            return trainer.train(resume_from_checkpoint=resume)
    logger.warning("%s already holds all %d steps: nothing left to train, it becomes the final model",
                   resume, finished.global_step)  # fmt: skip
    # what Trainer.train does first on any resume; private (no public hook): tests/test_trainer_hooks.py
    trainer._load_from_checkpoint(resume)
    trainer.state = finished
    losses = [entry["loss"] for entry in finished.log_history if "loss" in entry]
    metrics = {"epoch": finished.epoch, "train_steps_already_done": finished.global_step}
    return TrainOutput(finished.global_step, sum(losses) / len(losses) if losses else 0.0, metrics)


def calibrate_final_model(trainer, data: DataArguments, output_dir: Path) -> Calibration | None:
    """Fit the score's calibration on a seeded share of the final evaluation's queries, measure it on the others,
    and store it in the saved model (and its merged copy); the report goes into ``output_dir/calibration``."""
    eval_pairs = trainer.eval_dataset
    scored = getattr(eval_pairs, "last_scores", None)
    if not scored or len(scored) != len(eval_pairs.pairs):
        return None
    layers = getattr(trainer.reranker.spec, "layers", None)
    layer = layers[-1] if layers else None  # a layerwise model is evaluated on its last layer
    name = eval_pairs.eval_set.name
    try:
        calibration, held_scores, held_labels, held_queries = calibrate_held_out(
            [q for q, _ in eval_pairs.pairs], [s for s, _ in scored], [r for _, r in scored], data.calibration,
            data.calibration_fraction, data.split_seed, f"{name} (held out of training)", layer,
        )  # fmt: skip
    except ValueError as error:  # too few queries to split, or one-sided labels: nothing to fit
        logger.warning("calibration skipped: %s", error)
        return None
    for folder in (output_dir, output_dir / "merged"):
        if (folder / SPEC_FILENAME).is_file():
            save_calibration(folder, calibration)
    title = f"{name}, {held_queries} held-out queries"
    write_report(output_dir / "calibration", calibration, held_scores, held_labels, title)
    measured = calibration.report["held_out"]
    if measured:
        logger.info(
            "calibration (%s) on %d held-out pairs: ECE %.4f -> %.4f, Brier %.4f -> %.4f; stored in %s",
            data.calibration, measured["pairs"], measured["ece_before"], measured["ece_after"],
            measured["brier_before"], measured["brier_after"], SPEC_FILENAME,
        )  # fmt: skip
    return calibration


def final_run(trainer) -> dict[str, dict[str, float]]:
    """The final evaluation's reranked run (its pairs' last scores)."""
    eval_pairs = trainer.eval_dataset
    scores = [score for score, _ in eval_pairs.last_scores]
    return eval_pairs.eval_set.run_from_scores(eval_pairs.pairs, scores)


def fuse_with_first_stage(trainer, data: DataArguments, output_dir: Path) -> Fusion | None:
    """Choose the fusion weight on the calibration's validation queries, print the fused ranking on the other
    queries beside the first stage and the reranker, and store the fusion in the saved model."""
    eval_set = trainer.eval_dataset.eval_set
    if len(trainer.eval_dataset.last_scores) != len(trainer.eval_dataset.pairs):
        return None
    try:
        fusion, rows, tested = choose_on_split(
            eval_set.qrels, eval_set.candidates, final_run(trainer), data.fusion, data.calibration_fraction,
            data.split_seed, f"{eval_set.name} (held out of training)", eval_set.top_k,
        )  # fmt: skip
    except ValueError as error:
        logger.warning("fusion skipped: %s", error)
        return None
    for folder in (output_dir, output_dir / "merged"):
        if (folder / SPEC_FILENAME).is_file():
            save_fusion(folder, fusion)
    title = f"fusion with the first stage (weight {fusion.weight:g} chosen on {fusion.chosen_on})"
    table = metric_table(rows, eval_set.top_k)
    print(f"\n{title}, on the other {tested} queries:\n\n{table}\n", flush=True)
    atomic_write_text(output_dir / "fusion_table.md", f"{title}, on the other {tested} queries\n\n{table}\n")
    return fusion


def train(run: RunConfig) -> Path:
    """Train and save the final model into the output folder; returns that folder."""
    config = run.training
    prepared = prepare_data(run)
    eval_set = prepared.eval_set
    # data problems surface here, before any weights are read
    records = load_train_dataset(prepared.train_files, config.train_group_size, config.needs_teacher_scores)
    logger.info("loaded %d training queries from %s", len(records), ", ".join(prepared.train_files))
    if config.tokenizer_name is None:  # a damaged base model folder is named before anything loads it
        check_model_folder(resolve_model_path(config.model_name_or_path))
    resume = resolve_resume(config)
    set_seed(config.seed)  # before the model is built, so a fresh score head is reproducible
    trainer = build_trainer(config, records, eval_set)
    trainer.run_settings = run_settings(run, prepared)
    check_step_memory(trainer)  # before any compute: one step must fit in what the device has free
    rows: list[tuple[str, dict[str, float]]] = []
    if eval_set is not None:  # the first stage's figures cost no model call: always in the table
        rows.append(("BM25 (first stage)", eval_set.first_stage_metrics()))
        if run.data.evaluate_before_training:
            rows.append(("reranker before training", trainer.evaluate()))
    result = train_or_finish(trainer, resume)
    if trainer.preemption.stopped_at_step is not None and trainer.state.global_step < trainer.state.max_steps:
        raise trainer.preemption.preempted_error(latest_complete_checkpoint(config.output_dir))
    trainer.nan_guard.raise_if_pending()  # no final model from non-finite weights
    trainer.check_weights_finite()
    save_final_model(trainer, config.output_dir)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    if eval_set is not None:
        final = final_evaluation(trainer)
        trainer.save_metrics("eval", final)
        rows.append(("reranker after training", final))
        if trainer.is_world_process_zero():
            table = metric_table(rows, eval_set.top_k)
            by_layer = layer_table(rows)
            if by_layer is not None:
                table += f"\n\nnDCG@10 by layer\n\n{by_layer}"
            title = f"{eval_set.name}: {len(eval_set.queries)} queries, BM25 top {eval_set.top_k} reranked"
            print(f"\n{title}\n\n{table}\n", flush=True)
            atomic_write_text(Path(config.output_dir) / "eval_table.md", f"{title}\n\n{table}\n")
            atomic_write_text(
                Path(config.output_dir) / "eval_before_after.json", json.dumps(dict(rows), indent=2)
            )
            if run.data.calibration != "none":
                calibrate_final_model(trainer, run.data, Path(config.output_dir))
            warning = below_first_stage(
                eval_set.qrels, eval_set.candidates, final_run(trainer), eval_set.top_k
            )
            if warning:
                logger.warning(warning)
            if run.data.fusion != "none":
                fuse_with_first_stage(trainer, run.data, Path(config.output_dir))
    trainer.save_state()
    if trainer.is_world_process_zero():  # after the evaluation and calibration it shows, before any upload
        write_output_card(config.output_dir, trainer.hub_model_id or config.hub_model_id)
    if config.push_to_hub:  # what the Trainer's save_model would have pushed, from the complete folder
        push_output(trainer, config.output_dir)
    return Path(config.output_dir)

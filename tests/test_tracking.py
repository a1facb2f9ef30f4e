"""W&B (offline, read back with wandb's own reader) and TensorBoard get the config, metrics and score histograms;
every run leaves a PNG of its curves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_jsonl
from test_cross_encoder_training import make_config, toy_records
from test_evaluation import beir_slice  # noqa: F401  (the fixture)

from rerankforge.trainer.training_run import train


def wandb_records(run_file: Path) -> list[dict]:
    """The run's records through wandb's reader: `wandb leet inspect --json` where wandb has it, else (wandb
    0.21, setup.cfg's floor) its DataStore, read into the same shape."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    result = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(run_file)],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    if result.returncode == 0:
        return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return datastore_records(run_file)


def datastore_records(run_file: Path) -> list[dict]:
    """History and config records as `leet inspect --json` gives them (items keyed by their joined key)."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal.datastore import DataStore

    def items(repeated) -> dict:
        return {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in repeated}

    store = DataStore()
    store.open_for_scan(str(run_file))
    records = []
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            records.append({"type": kind, "history": {"item": items(record.history.item)}})
        elif kind == "config":
            records.append({"type": kind, "config": {"update": items(record.config.update)}})
        elif kind == "run":
            records.append({"type": kind, "run": {"config": {"update": items(record.run.config.update)}}})
    return records


def test_a_tracked_run_logs_config_metrics_and_histograms(tmp_path, tiny_bert_dir, beir_slice, monkeypatch):  # noqa: F811
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(8))
    config = make_config(
        tmp_path, tiny_bert_dir, data, eval_data=str(beir_slice), eval_top_k=10, per_device_eval_batch_size=16,
        max_steps=4, eval_strategy="steps", eval_steps=2, report_to=["wandb", "tensorboard"],
        evaluate_before_training=False,
    )  # fmt: skip
    out = train(config)
    import wandb

    wandb.finish()  # the Trainer leaves the run open (a script's exit closes it): flush it before reading

    png = out / "training_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (run_file,) = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    records = wandb_records(run_file)
    config_keys: dict = {}  # the run record's config, then any later config updates
    for record in records:
        for holder in (record.get("run", {}), record):
            update = (
                holder.get("config", {}).get("update") if isinstance(holder.get("config"), dict) else None
            )
            if isinstance(update, dict):
                config_keys.update(update)
    assert config_keys["train_group_size"] == 4 and config_keys["family"] == "cross_encoder"
    assert config_keys["learning_rate"] == pytest.approx(1e-3)
    history = [r["history"]["item"] for r in records if r.get("type") == "history"]
    for key in ("train/loss", "eval/ndcg@10", "eval/mrr@10", "eval/loss"):
        assert any(key in item for item in history), key
    for key in ("eval/positive_scores", "eval/negative_scores"):  # one histogram per evaluation
        assert sum(item.get(f"{key}._type") == "histogram" for item in history) == 2, key

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = [p.parent for p in (tmp_path / "tb").rglob("events.out.tfevents.*")][:1]
    accumulator = EventAccumulator(str(events), size_guidance={"histograms": 0})
    accumulator.Reload()
    assert {"eval/positive_scores", "eval/negative_scores"} <= set(accumulator.Tags()["histograms"])
    assert len(accumulator.Histograms("eval/positive_scores")) == 2  # one per evaluation (steps 2 and 4)

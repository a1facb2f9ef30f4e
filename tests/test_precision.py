"""``bf16: auto`` and ``attention_dropout``: the two settings that let the default recipe run at its best on
processors with and without bf16 units."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from rerankforge.inference.backend_choice import auto_dtype
from rerankforge.inference.modeling.cross_encoder import load_cross_encoder
from rerankforge.inference.modeling.precision import (
    cpu_has_native_bf16,
    native_bf16,
    resolve_auto_bf16,
)
from rerankforge.trainer.cli import parse_config
from rerankforge.trainer.cross_encoder_config import CrossEncoderConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "recipes" / "minilm" / "cross_encoder" / "squad.yaml"


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.skip("no CPU flags in /proc/cpuinfo")


def test_native_bf16_follows_the_processor_flags():
    flags = cpu_flags()
    assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)
    assert native_bf16(use_cpu=True) == cpu_has_native_bf16()
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert auto_dtype("cpu") == expected


def test_auto_in_a_recipe_or_on_the_command_line_becomes_this_machines_choice():
    here = cpu_has_native_bf16()
    recipe, argv = resolve_auto_bf16({"bf16": "auto", "use_cpu": True}, ["--seed", "1"])
    assert recipe["bf16"] is here and argv == ["--seed", "1"]
    _, argv = resolve_auto_bf16({}, ["--bf16", "auto", "--use_cpu", "true"])
    assert argv == ["--bf16", str(here).lower(), "--use_cpu", "true"]
    _, argv = resolve_auto_bf16({}, ["--bf16=auto", "--use_cpu"])
    assert argv == [f"--bf16={str(here).lower()}", "--use_cpu"]


def test_other_values_pass_through_and_the_command_line_wins():
    assert resolve_auto_bf16({"bf16": True}, ["--bf16", "false"]) == ({"bf16": True}, ["--bf16", "false"])
    config = parse_config([str(DEFAULT_RECIPE), "--bf16", "true"])
    assert config.training.bf16 is True
    config = parse_config([str(DEFAULT_RECIPE), "--bf16", "false"])
    assert config.training.bf16 is False


def test_the_default_recipe_resolves_auto_and_drops_attention_dropout():
    config = parse_config([str(DEFAULT_RECIPE)])
    assert config.training.bf16 is bool(
        {"avx512_bf16", "amx_bf16"} & cpu_flags()
    )  # the recipe says use_cpu: true
    assert config.training.attention_dropout == 0.0


def test_auto_on_each_kind_of_device(monkeypatch):
    """A CPU with bf16 units, a GPU with and without its own bf16, and a run that is not on the CPU while no GPU
    exists (transformers refuses bf16 there, so auto must say false)."""
    import rerankforge.inference.modeling.precision as precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert native_bf16(use_cpu=True) and not native_bf16(use_cpu=False)
    config = parse_config([str(DEFAULT_RECIPE)])
    assert config.training.bf16 is True
    config = parse_config([str(DEFAULT_RECIPE), "--use_cpu", "false", "--max_steps", "2000"])
    assert config.training.bf16 is False and config.training.use_cpu is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked = []
    for own_bf16 in (True, False):

        def is_bf16_supported(including_emulation=True, own_bf16=own_bf16):
            asked.append(including_emulation)
            return own_bf16

        monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
        assert native_bf16(use_cpu=False) is own_bf16
    assert asked == [False, False]  # emulated bf16 on older GPUs is the slow case: not counted


def test_auto_dtype_is_float32_for_the_graph_backends(monkeypatch):
    import rerankforge.inference.modeling.precision as precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert auto_dtype("cpu") == torch.bfloat16
    for backend in ("onnx", "openvino", "onnx-int8", "openvino-bf16"):
        assert auto_dtype("cpu", backend) == torch.float32
    monkeypatch.setenv("RERANKFORGE_BACKEND", "onnx")
    assert auto_dtype("cpu") == torch.float32


def dtype_choices(parser: argparse.ArgumentParser) -> list[set[str]]:
    """The choices of every --dtype / --teacher-dtype option of ``parser`` and its subcommands."""
    found = []
    for action in parser._actions:
        if action.dest in ("dtype", "teacher_dtype"):
            found.append(set(action.choices))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += dtype_choices(sub)
    return found


def test_every_dtype_option_offers_the_names_scoring_dtype_reads():
    """rerankforge-data keeps its own list of names (it starts without importing torch): it must be the one
    precision.DTYPES holds, and every name resolves."""
    from rerankforge.data_tools.cli import make_parser as data_parser
    from rerankforge.inference.backend_choice import scoring_dtype
    from rerankforge.inference.modeling.precision import DTYPES
    from rerankforge.trainer.eval_cli import make_parser as eval_parser

    found = dtype_choices(data_parser()) + dtype_choices(eval_parser())
    # rerankforge-data mine --teacher-dtype, window --teacher-dtype and score --dtype; rerankforge-eval --dtype
    assert len(found) == 4
    assert all(choices == {*DTYPES, "auto"} for choices in found)
    for name in DTYPES:
        assert scoring_dtype(name, "cpu") == getattr(torch, name)


def test_attention_dropout_reaches_the_attention_modules(tiny_bert_dir):
    kept = load_cross_encoder(str(tiny_bert_dir))
    assert kept.config.attention_probs_dropout_prob == pytest.approx(0.1)
    changed = load_cross_encoder(str(tiny_bert_dir), attention_dropout=0.0)
    assert changed.config.attention_probs_dropout_prob == 0.0
    assert changed.config.hidden_dropout_prob == pytest.approx(0.1)  # hidden-state dropout stays
    attention_dropouts = [
        m.dropout.p for m in changed.modules() if type(m).__name__.endswith("SelfAttention")
    ]
    assert attention_dropouts and all(p == 0.0 for p in attention_dropouts)


def test_attention_dropout_is_checked():
    common = {"model_name_or_path": "m", "output_dir": "o"}
    with pytest.raises(ValueError, match="attention_dropout must be in"):
        CrossEncoderConfig(**common, attention_dropout=1.0)
    CrossEncoderConfig(**common, attention_dropout=0.0)


def test_each_spelling_is_set_and_an_architecture_without_one_is_refused(tmp_path):
    from transformers import (
        DistilBertConfig,
        DistilBertForSequenceClassification,
        GPT2Config,
        GPT2ForSequenceClassification,
    )

    config = DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32, num_labels=1)
    DistilBertForSequenceClassification(config).save_pretrained(tmp_path / "distilbert")
    model = load_cross_encoder(
        str(tmp_path / "distilbert"), attention_dropout=0.0
    )  # its name: attention_dropout
    assert model.config.attention_dropout == 0.0
    config = GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, num_labels=1, pad_token_id=0)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "gpt2")  # it calls it attn_pdrop
    with pytest.raises(ValueError, match="attention_probs_dropout_prob or attention_dropout"):
        load_cross_encoder(str(tmp_path / "gpt2"), attention_dropout=0.0)
    load_cross_encoder(str(tmp_path / "gpt2"))  # unset: no check, loads as before

"""`rerankforge-export` writes sentence-transformers 6's configuration for causal rerankers: `CrossEncoder(folder)`
scores the export with rerankforge's token ids (so its scores), for each LLM input format, with no
hand-formatting; a wrong template is caught by the same comparison."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_jsonl
from score_checks import assert_same_scores
from test_cross_encoder_training import toy_records
from test_llm_formats import qwen3_dir, qwen_tokenizer  # noqa: F401  (fixtures)

from rerankforge.inference import LLMReranker
from rerankforge.inference.auto import load_reranker
from rerankforge.trainer.export import main as export_main
from rerankforge.trainer.run_config import RunConfig
from rerankforge.trainer.sentence_transformers_files import TEMPLATE_DIR, TEMPLATE_NAME
from rerankforge.trainer.training_run import train

# sentence-transformers 6 scores causal LMs (LogitScore); 5.x, the floor, loads only sequence classifiers
pytest.importorskip("sentence_transformers.cross_encoder.modules.logit_score")
from sentence_transformers import CrossEncoder  # noqa: E402

SHORT_PAIRS = [
    ("what is a panda?", "The giant panda is a bear species endemic to China."),
    ("what is a panda?", "Paris is the capital of France."),
    ("how do plants make food ", "Photosynthesis turns light, water and carbon dioxide into sugar.\n"),
    ("Où est la gare ?", "La gare est à deux rues d'ici."),
    ("what is the apple?", "the apple is here, by the river stone"),
]
LONG_PAIRS = [
    ("what is a panda?", "the stone is there, cloud maybe " * 60),
    ("a long query " * 30, "a passage"),
]


def trained_full_model(tmp_path, model_dir, **settings):
    """A few steps of the LLM family without LoRA (a full-weight folder), on the toy groups."""
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(8))
    run = RunConfig.from_settings(
        "test", family="llm", model_name_or_path=str(model_dir), train_data=[str(data)], use_lora=False,
        output_dir=str(tmp_path / "trained"), train_group_size=4, query_max_len=48, passage_max_len=96,
        per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=2, learning_rate=1e-3,
        activation_checkpointing=False, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
        seed=0, **settings,
    )  # fmt: skip
    return train(run)


def served_scores(folder, pairs, **predict) -> list[float]:
    model = CrossEncoder(str(folder), device="cpu", model_kwargs={"dtype": torch.float32})
    return model.predict(pairs, activation_fn=torch.nn.Identity(), **predict).tolist()


@pytest.mark.parametrize("input_format", ["bge", "qwen3", "chat"])
def test_crossencoder_scores_the_export_as_rerankforge_does(tmp_path, tiny_llm_dirs, qwen3_dir, input_format):  # noqa: F811
    base = tiny_llm_dirs("llama") if input_format == "bge" else qwen3_dir
    extra = {} if input_format == "bge" else {"input_format": input_format}
    out = tmp_path / "export"
    assert export_main([str(trained_full_model(tmp_path, base, **extra)), str(out)]) == 0
    for name in ("modules.json", "sentence_bert_config.json", "1_LogitScore/config.json"):
        assert (out / name).is_file(), name
    reranker = LLMReranker.from_pretrained(str(out), device="cpu")  # rerankforge still reads the folder
    spec = reranker.spec
    score = json.loads((out / "1_LogitScore" / "config.json").read_text())
    assert score["true_token_id"] == spec.yes_token_id
    assert score["false_token_id"] == (spec.no_token_id if spec.score == "yes_minus_no" else None)
    # the chat layouts cut the body as sentence-transformers cuts the row: every pair, long ones too
    pairs = SHORT_PAIRS if input_format == "bge" else SHORT_PAIRS + LONG_PAIRS
    expected = reranker.compute_score(pairs)
    assert_same_scores(served_scores(out, pairs), expected)
    probabilities = CrossEncoder(str(out), device="cpu", model_kwargs={"dtype": torch.float32}).predict(pairs)
    assert_same_scores(probabilities.tolist(), reranker.compute_score(pairs, normalize=True))
    # a per-call instruction goes in as sentence-transformers' prompt, as rerankforge's prompt=
    instruction = "Is the passage about the query?"
    assert_same_scores(served_scores(out, pairs, prompt=instruction),
                       reranker.compute_score(pairs, prompt=instruction))  # fmt: skip
    card = (out / "README.md").read_text()
    assert "## sentence-transformers 6" in card and f"additional_chat_templates/{TEMPLATE_NAME}.jinja" in card


def test_a_wrong_template_gives_other_scores(tmp_path, tiny_llm_dirs):
    """The comparison can fail: a template one word off (what a hand-written one often is) moves the scores."""
    out = tmp_path / "export"
    assert export_main([str(trained_full_model(tmp_path, tiny_llm_dirs("llama"))), str(out)]) == 0
    expected = LLMReranker.from_pretrained(str(out), device="cpu").compute_score(SHORT_PAIRS)
    template = out / TEMPLATE_DIR / f"{TEMPLATE_NAME}.jinja"
    assert 'A: " }}' in template.read_text()
    template.write_text(template.read_text().replace('A: " }}', 'Query: " }}'))
    with pytest.raises(AssertionError):
        assert_same_scores(served_scores(out, SHORT_PAIRS), expected, rel=1e-2)


def test_bge_rows_beyond_the_budgets_are_cut_whole_and_the_card_says_so(tmp_path, tiny_llm_dirs):
    out = tmp_path / "export"
    assert export_main([str(trained_full_model(tmp_path, tiny_llm_dirs("llama"))), str(out)]) == 0
    config = json.loads((out / "sentence_bert_config.json").read_text())
    reranker = LLMReranker.from_pretrained(str(out), device="cpu")
    encoder = reranker.encoder(reranker.lengths)
    longest = len(encoder.encode(["x " * 100], ["y " * 200])[0])  # both parts cut to their budgets
    assert config["processing_kwargs"]["text"]["max_length"] == longest
    assert f"cuts a row at {longest} tokens as a whole" in (out / "README.md").read_text()


def test_adapter_and_layerwise_exports_say_why_they_are_not_configured(tmp_path, tiny_llm_dirs):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(4))
    common = dict(model_name_or_path=str(tiny_llm_dirs("llama")), train_data=[str(data)], train_group_size=4,
                  query_max_len=16, passage_max_len=32, per_device_train_batch_size=2, max_steps=1, lora_rank=2,
                  lora_alpha=4, activation_checkpointing=False, save_strategy="no", report_to="none",
                  use_cpu=True, disable_tqdm=True)  # fmt: skip
    adapter = train(RunConfig.from_settings("t", family="llm", output_dir=str(tmp_path / "a"), **common))
    layerwise = train(RunConfig.from_settings("t", family="layerwise", start_layer=1, output_dir=str(tmp_path / "l"),
                                              **common))  # fmt: skip
    for folder, reason in (
        (adapter, "export with --merge-lora"),
        (layerwise, "--as-sequence-classification"),
    ):
        out = tmp_path / f"{folder.name}-export"
        assert export_main([str(folder), str(out)]) == 0
        assert not (out / "modules.json").exists()
        assert reason in (out / "README.md").read_text()
    merged = tmp_path / "merged-export"
    assert export_main([str(adapter), str(merged), "--merge-lora"]) == 0
    assert (merged / "modules.json").is_file()


@pytest.mark.parametrize("case", ["bge", "qwen3", "layerwise"])
def test_crossencoder_scores_a_sequence_classification_export_from_pairs(
    tmp_path,
    tiny_llm_dirs,
    qwen3_dir,  # noqa: F811
    case,
):
    """An `--as-sequence-classification` export (llm, or layerwise cut at a layer) carries the rerank template:
    `CrossEncoder(folder).predict(pairs)` gives the reranker's scores with no formatting by hand."""
    if case == "layerwise":
        data = write_jsonl(tmp_path / "train.jsonl", toy_records(8))
        run = RunConfig.from_settings(
            "test", family="layerwise", model_name_or_path=str(tiny_llm_dirs("llama")), train_data=[str(data)],
            start_layer=1, use_lora=False, output_dir=str(tmp_path / "trained"), train_group_size=4, query_max_len=48,
            passage_max_len=96, per_device_train_batch_size=2, max_steps=2, learning_rate=1e-3,
            activation_checkpointing=False, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
            seed=0,
        )  # fmt: skip
        trained, extra, layer = train(run), ["--layer", "1"], 1
    else:
        base = tiny_llm_dirs("llama") if case == "bge" else qwen3_dir
        trained = trained_full_model(tmp_path, base, **({} if case == "bge" else {"input_format": "qwen3"}))
        extra, layer = [], None
    out = tmp_path / "seq"
    assert export_main([str(trained), str(out), "--as-sequence-classification", *extra]) == 0
    assert (out / TEMPLATE_DIR / f"{TEMPLATE_NAME}.jinja").is_file() and not (out / "1_LogitScore").exists()
    reranker = load_reranker(str(trained), device="cpu", dtype=torch.float32)
    expected = reranker.compute_score(SHORT_PAIRS, **({"cutoff_layers": [layer]} if layer else {}))
    if layer:
        expected = expected[0] if isinstance(expected[0], list) else expected
    assert_same_scores(served_scores(out, SHORT_PAIRS), expected)
    card = (out / "README.md").read_text()
    assert "## sentence-transformers 6" in card and "## vLLM" in card and "--chat-template" in card

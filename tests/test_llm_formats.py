"""The qwen3 and chat input formats on tiny random Qwen3 models: token layout, score, LoRA training, layerwise
heads, and the one-logit sequence-classification export (issue 16)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import LLM_TEXTS, write_jsonl
from safetensors.torch import load_file
from score_checks import assert_same_scores
from test_cross_encoder_training import toy_records

from rerankforge.data_tools import load_train_dataset
from rerankforge.inference import LayerwiseReranker, LLMReranker
from rerankforge.inference.auto import load_reranker
from rerankforge.inference.modeling.llm_formats import (
    CHAT_INSTRUCTION,
    QWEN3_INSTRUCTION,
    QWEN3_PREFIX,
    QWEN3_SUFFIX,
    prompt_encoder,
)
from rerankforge.inference.modeling.spec import RerankerSpec
from rerankforge.trainer.export import main as export_main
from rerankforge.trainer.families import build_trainer
from rerankforge.trainer.run_config import RunConfig

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_TEXTS = [QWEN3_PREFIX + QWEN3_SUFFIX, QWEN3_INSTRUCTION, CHAT_INSTRUCTION, "yes", "no", '"yes" or "no"',
              "<Instruct>: <Query>: <Document>: Query: Passage: Answer only"] * 40  # fmt: skip


@pytest.fixture(scope="module")
def qwen_tokenizer():
    """A byte-level BPE tokenizer with Qwen's special tokens (no BOS, pad <|endoftext|>) and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rust = Tokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    rust.train_from_iterator(
        [*LLM_TEXTS, *QWEN_TEXTS],
        trainers.BpeTrainer(vocab_size=700, special_tokens=special,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )  # fmt: skip
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=rust, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def tiny_qwen3(vocab_size: int, num_layers: int = 3):
    """A random Qwen3 drawn wide (initializer_range 0.1, not 0.02): its yes/no log-odds then spread over more than
    0.05 on the toy pairs (0.014 at 0.02), so a comparison at 1e-4 of that range can fail."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
                         tie_word_embeddings=True, initializer_range=0.1)  # fmt: skip
    return Qwen3ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory, qwen_tokenizer):
    """A plain Hub-style Qwen3 folder (no rerankforge.json), laid out as Qwen3-Reranker."""
    folder = tmp_path_factory.mktemp("tiny-qwen3")
    tiny_qwen3(len(qwen_tokenizer)).save_pretrained(folder)
    qwen_tokenizer.save_pretrained(folder)
    return folder


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_qwen3_ids_follow_the_model_card_token_for_token(qwen_tokenizer):
    # Qwen3-Reranker's model card: prefix + body cut to what is left + suffix, the body one text
    prefix, suffix = ids(qwen_tokenizer, QWEN3_PREFIX), ids(qwen_tokenizer, QWEN3_SUFFIX)
    max_length = len(prefix) + len(suffix) + 60
    encoder = prompt_encoder(qwen_tokenizer, "qwen3", None, 8, 8, max_length)
    query, short, long = "where is the apple", "the apple is here", "the stone is there, cloud maybe " * 20
    rows = encoder.encode([query, query], [short, long])
    assert qwen_tokenizer.convert_ids_to_tokens(prefix)[0] == "<|im_start|>"
    assert qwen_tokenizer.convert_ids_to_tokens(suffix)[-4:] == ["<think>", "ĊĊ", "</think>", "ĊĊ"]
    for passage, row in zip([short, long], rows, strict=True):
        body = f"<Instruct>: {QWEN3_INSTRUCTION}\n<Query>: {query}\n<Document>: {passage}"
        cut = qwen_tokenizer(body, add_special_tokens=False, truncation=True,
                             max_length=max_length - len(prefix) - len(suffix))["input_ids"]  # fmt: skip
        assert row == prefix + cut + suffix
    assert len(rows[0]) < max_length and len(rows[1]) == max_length  # the long document was cut, frame intact
    assert qwen_tokenizer.decode(rows[1][len(prefix) : -len(suffix)]).startswith(
        f"<Instruct>: {QWEN3_INSTRUCTION}"
    )

    batch = encoder.pad_left(rows, None)  # left padding: every row ends at the last column
    pad = qwen_tokenizer.pad_token_id
    width = len(rows[1])
    assert batch["input_ids"][0].tolist() == [pad] * (width - len(rows[0])) + rows[0]
    assert batch["attention_mask"][0].tolist() == [0] * (width - len(rows[0])) + [1] * len(rows[0])
    assert encoder.text(query, short) == QWEN3_PREFIX + f"<Instruct>: {QWEN3_INSTRUCTION}\n<Query>: {query}\n" \
        f"<Document>: {short}" + QWEN3_SUFFIX  # fmt: skip


def test_a_plain_qwen3_reranker_folder_is_recognised_and_scores_the_log_odds_of_yes(
    qwen3_dir, qwen_tokenizer
):
    reranker = LLMReranker.from_pretrained(str(qwen3_dir), device="cpu")
    assert not reranker.trained
    spec = reranker.spec
    assert (spec.input_format, spec.score, spec.yes_token, spec.no_token) == (
        "qwen3",
        "yes_minus_no",
        "yes",
        "no",
    )
    assert spec.max_length == 8192 and spec.prompt == QWEN3_INSTRUCTION
    pairs = [
        ("where is the apple", "the apple is here, apple indeed"),
        ("where is the stone", "the cloud maybe"),
    ]
    scores = reranker.compute_score(pairs)

    # written out: the last position's logits, log_softmax over [no, yes], as the model card computes P(yes)
    model = tiny_qwen3(len(qwen_tokenizer))
    yes, no = ids(qwen_tokenizer, "yes")[0], ids(qwen_tokenizer, "no")[0]
    for (query, passage), score in zip(pairs, scores, strict=True):
        text = (f"{QWEN3_PREFIX}<Instruct>: {QWEN3_INSTRUCTION}\n<Query>: {query}\n<Document>: {passage}"
                f"{QWEN3_SUFFIX}")  # fmt: skip
        with torch.no_grad():
            last = model(input_ids=torch.tensor([ids(qwen_tokenizer, text)])).logits[0, -1]
        log_p = torch.log_softmax(torch.stack([last[no], last[yes]]), dim=0)
        assert score == pytest.approx((log_p[1] - log_p[0]).item(), abs=1e-5)  # log-odds of yes
        assert torch.sigmoid(torch.tensor(score)).item() == pytest.approx(log_p[1].exp().item(), abs=1e-6)

    # named explicitly, the same folder reads the BGE layout instead
    bge = LLMReranker.from_pretrained(str(qwen3_dir), device="cpu", input_format="bge")
    assert bge.spec.input_format == "bge" and bge.compute_score(pairs) != pytest.approx(scores, abs=1e-3)


def config_for(tmp_path, model_dir, data, family="llm", **overrides) -> RunConfig:
    settings = dict(
        model_name_or_path=str(model_dir), train_data=[str(data)], output_dir=str(tmp_path / "out"),
        input_format="qwen3", train_group_size=4, query_max_len=16, passage_max_len=24,
        per_device_train_batch_size=2, num_train_epochs=2, learning_rate=5e-3, lora_rank=4, lora_alpha=8,
        lora_dropout=0.0, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
        dataloader_pin_memory=False, seed=0, activation_checkpointing=False,
    )  # fmt: skip
    settings.update(overrides)
    return RunConfig.from_settings("config_for", family=family, **settings)


def build(config):
    records = load_train_dataset(
        config.data.train_data, config.training.train_group_size, config.training.needs_teacher_scores
    )
    return build_trainer(config.training, records)


def trainer_scores(trainer, pairs, **forward) -> list[float]:
    model = trainer.model.eval()
    encoder = trainer.data_collator.encoder
    batch = encoder.pad_left(encoder.encode([q for q, _ in pairs], [p for _, p in pairs]), None)
    with torch.no_grad():
        out = model(**batch, **forward)
    return (out[next(iter(out))] if isinstance(out, dict) else out).tolist()


def test_qwen3_lora_training_saved_adapter_merged_and_classifier_give_the_trainers_scores(
    tmp_path, qwen3_dir, qwen_tokenizer
):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(8))
    config = config_for(tmp_path, qwen3_dir, data, merge_lora=True)
    assert (config.training.score, config.training.yes_token, config.training.no_token) == (
        "yes_minus_no",
        "yes",
        "no",
    )
    trainer = build(config)
    # the collator's rows are the qwen3 layout, and the loss reads the log-odds that inference computes
    row = trainer.data_collator.encoder.encode(["where is the apple"], ["the apple is here"])[0]
    assert row[: len(ids(qwen_tokenizer, QWEN3_PREFIX))] == ids(qwen_tokenizer, QWEN3_PREFIX)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all("lora_" in n for n in changed)  # only the adapters moved
    base = load_file(qwen3_dir / "model.safetensors")
    state = trainer.model.get_base_model().backbone.state_dict()
    for name, tensor in base.items():
        module, leaf = name.rsplit(".", 1)
        assert torch.equal(state.get(name, state.get(f"{module}.base_layer.{leaf}")), tensor)

    trainer.save_model(config.training.output_dir)
    trainer.finish_saving(config.training.output_dir)
    out = tmp_path / "out"
    assert RerankerSpec.load(out).input_format == "qwen3"
    pairs = [(g.query, p) for g in [trainer.train_dataset[i] for i in range(2)] for p in g.passages]
    trained = trainer_scores(trainer, pairs)
    for folder in (out, out / "merged"):
        reranker = load_reranker(str(folder), device="cpu")
        assert reranker.spec.input_format == "qwen3"
        assert_same_scores(reranker.compute_score(pairs, batch_size=3), trained)

    assert export_main([str(out), str(tmp_path / "seq"), "--as-sequence-classification"]) == 0
    classifier_scores = classify_in_a_process_without_peft(tmp_path / "seq", pairs)
    assert_same_scores(classifier_scores, trained)
    fmt = json.loads((tmp_path / "seq" / "text_format.json").read_text())
    assert fmt["input_format"] == "qwen3" and fmt["template"].startswith(QWEN3_PREFIX)
    assert "Qwen3ForSequenceClassification" in (tmp_path / "seq" / "README.md").read_text()
    # the base's chat template would frame the text twice: the one template is the export's "rerank"
    from transformers import AutoTokenizer

    assert not (tmp_path / "seq" / "chat_template.jinja").exists()
    assert set(AutoTokenizer.from_pretrained(str(tmp_path / "seq")).chat_template) == {"rerank"}


def classify_in_a_process_without_peft(folder, pairs) -> list[float]:
    """The export's logits with plain transformers, peft unimportable, the pairs written into its template."""
    script = f"""
import json, sys
sys.modules["peft"] = None
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
folder = {str(folder)!r}
template = json.load(open(folder + "/text_format.json"))["template"]
texts = [template.replace("{{query}}", q).replace("{{passage}}", p) for q, p in {list(map(list, pairs))!r}]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
batch = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
with torch.inference_mode():
    print(json.dumps(model(**batch).logits[:, 0].tolist()))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_layerwise_heads_on_qwen3_start_as_its_score_and_export_a_chosen_layer(tmp_path, qwen3_dir):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(6))
    config = config_for(tmp_path, qwen3_dir, data, family="layerwise", start_layer=2,
                        loss="bce", num_train_epochs=1)  # fmt: skip
    trainer = build(config)
    pairs = [(g.query, p) for g in [trainer.train_dataset[i] for i in range(3)] for p in g.passages]
    plain = LLMReranker.from_pretrained(str(qwen3_dir), device="cpu")  # the qwen3 log-odds, untrained
    assert_same_scores(trainer_scores(trainer, pairs, layers=[3]), plain.compute_score(pairs))
    assert not any(p.requires_grad for n, p in trainer.model.named_parameters() if n.endswith(".bias"))
    trainer.train()  # a pointwise loss, which a bias could have absorbed: it stays zero
    trainer.save_model(config.training.output_dir)
    reranker = LayerwiseReranker.from_pretrained(str(tmp_path / "out"), device="cpu")
    assert reranker.spec.input_format == "qwen3" and reranker.layers == [2, 3]
    expected = reranker.compute_score(pairs, cutoff_layers=[2])
    assert export_main([str(tmp_path / "out"), str(tmp_path / "seq2"), "--as-sequence-classification",
                        "--layer", "2"]) == 0  # fmt: skip
    config_json = json.loads((tmp_path / "seq2" / "config.json").read_text())
    assert config_json["num_hidden_layers"] == 2 and len(config_json["id2label"]) == 1
    assert_same_scores(classify_in_a_process_without_peft(tmp_path / "seq2", pairs), expected)


def test_chat_format_wraps_the_tokenizers_own_template_and_trains(tmp_path, qwen3_dir, qwen_tokenizer):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(4))
    config = config_for(tmp_path, qwen3_dir, data, input_format="chat", yes_token="yes", no_token="no",
                        num_train_epochs=1)  # fmt: skip
    trainer = build(config)
    encoder = trainer.data_collator.encoder
    row = encoder.encode(["where is the apple"], ["the apple is here"])[0]
    user = f'{CHAT_INSTRUCTION} Answer only "yes" or "no".\n\nQuery: where is the apple\n\nPassage: the apple is here'
    rendered = qwen_tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                                  tokenize=False)  # fmt: skip
    assert rendered == "<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n"
    assert row == ids(qwen_tokenizer, "<|im_start|>user\n") + ids(qwen_tokenizer, user) + ids(
        qwen_tokenizer, "<|im_end|>\n<|im_start|>assistant\n"
    )
    # the exact layout: the template's own frame around the user message, token for token, nothing added
    assert qwen_tokenizer.decode(row) == rendered == encoder.text("where is the apple", "the apple is here")
    tokens = qwen_tokenizer.convert_ids_to_tokens(row)
    assert tokens[:3] == ["<|im_start|>", "user", "Ċ"]
    # the generation prompt closes the row: the score is read at its last token
    assert tokens[-5:] == ["<|im_end|>", "Ċ", "<|im_start|>", "assistant", "Ċ"]
    long_row = encoder.encode(["where is the apple"], ["the stone is there, cloud maybe " * 20])[0]
    assert len(long_row) == encoder.max_length and long_row[:3] == row[:3] and long_row[-5:] == row[-5:]
    batch = trainer.data_collator([trainer.train_dataset[0]])  # left-padded: every row ends with the frame
    assert all(r[-5:].tolist() == row[-5:] for r in batch["input_ids"])
    spec = trainer.model.spec
    assert spec.input_format == "chat" and spec.score == "yes_minus_no"
    yes, no = ids(qwen_tokenizer, "yes"), ids(qwen_tokenizer, "no")
    assert (spec.yes_token_id, spec.no_token_id) == (yes[0], no[0])

    pairs = [(g.query, p) for g in [trainer.train_dataset[i] for i in range(2)] for p in g.passages]
    before = trainer_scores(trainer, pairs)
    trainer.train()
    assert trainer_scores(trainer, pairs) != pytest.approx(before, abs=1e-3)  # it trained


def test_format_settings_that_contradict_the_format_are_refused(tmp_path, qwen3_dir, tiny_llm_dirs):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(2))
    with pytest.raises(ValueError, match="qwen3 scores the log-odds"):
        config_for(tmp_path, qwen3_dir, data, yes_token="Yes")
    with pytest.raises(ValueError, match="unknown input_format"):
        config_for(tmp_path, qwen3_dir, data, input_format="alpaca")
    with pytest.raises(ValueError, match="chat template"):  # a tokenizer without one, found before training
        build(config_for(tmp_path, tiny_llm_dirs("llama"), data, input_format="chat"))


def test_sequence_classification_export_refuses_what_it_cannot_convert(tmp_path, capsys):
    with pytest.raises(SystemExit):  # --layer belongs to the conversion
        export_main([str(tmp_path), str(tmp_path / "x"), "--layer", "2"])
    with pytest.raises(SystemExit):  # the conversion merges adapters itself
        export_main([str(tmp_path), str(tmp_path / "x"), "--as-sequence-classification", "--merge-lora"])
    (tmp_path / "ce").mkdir()
    (tmp_path / "ce" / "rerankforge.json").write_text(
        json.dumps(
            {
                "family": "cross_encoder",
                "version": 2,
                "query_max_len": 8,
                "passage_max_len": 8,
                "max_length": 16,
            }
        )  # fmt: skip
    )
    assert export_main([str(tmp_path / "ce"), str(tmp_path / "x"), "--as-sequence-classification"]) == 2
    assert "already is a sequence classifier" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

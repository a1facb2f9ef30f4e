"""LLM reranker training with LoRA (peft) and the real `transformers.Trainer`, on tiny random decoders."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import write_jsonl
from safetensors.torch import load_file
from score_checks import assert_same_scores
from test_cross_encoder_training import toy_records

from rerankforge.data_tools import load_train_dataset
from rerankforge.inference import FlagLLMReranker, LLMReranker
from rerankforge.inference.auto import load_reranker
from rerankforge.inference.modeling.activation_checkpointing import checkpointing_kwargs, enable_checkpointing
from rerankforge.inference.modeling.llm import score_last_token
from rerankforge.inference.modeling.llm_inputs import DEFAULT_PROMPT, pad_left
from rerankforge.inference.modeling.spec import LLMSpec, RerankerSpec
from rerankforge.trainer.families import build_trainer
from rerankforge.trainer.run_config import RunConfig
from rerankforge.trainer.training_run import train

ARCHITECTURES = ["llama", "qwen2", "gemma", "gemma2", "gemma3", "mistral"]


def make_config(tmp_path, model_dir, data, **overrides) -> RunConfig:
    settings = dict(
        model_name_or_path=str(model_dir),
        train_data=[str(data)],
        output_dir=str(tmp_path / "out"),
        train_group_size=4,
        query_max_len=16,
        passage_max_len=32,
        per_device_train_batch_size=2,
        num_train_epochs=1,
        learning_rate=5e-3,
        lora_rank=4,
        lora_alpha=8,
        lora_dropout=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
    )
    settings.update(overrides)
    return RunConfig.from_settings("make_config", **{"family": "llm", **settings})


def build(config):
    records = load_train_dataset(
        config.data.train_data, config.training.train_group_size, config.training.needs_teacher_scores
    )
    return build_trainer(config.training, records)


def batch_scores(trainer, groups) -> list[float]:
    batch = trainer.data_collator(groups)
    trainer.model.eval()
    with torch.no_grad():
        return trainer.score(trainer.model, {k: v for k, v in batch.items() if torch.is_tensor(v)}).tolist()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_lora_training_changes_the_adapters_and_leaves_every_base_weight_equal(
    tmp_path, tiny_llm_dirs, architecture
):
    model_dir = tiny_llm_dirs(architecture)
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(8))
    trainer = build(make_config(tmp_path, model_dir, data, num_train_epochs=2))
    base = load_file(model_dir / "model.safetensors")
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora_before}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    trainer.train()

    lora_after = {n: p.detach() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert all(not torch.equal(lora_before[n], lora_after[n]) for n in lora_after if "lora_B" in n)
    base_after = trainer.model.get_base_model().state_dict()
    checked = 0
    for name, tensor in base.items():
        module, leaf = name.rsplit(".", 1)
        key = name if name in base_after else f"{module}.base_layer.{leaf}"  # peft wraps adapted layers
        assert torch.equal(base_after[key], tensor), f"base weight {name} changed"
        checked += 1
    assert checked == len(base)


def test_loss_is_the_grouped_cross_entropy_of_the_yes_logits(tmp_path, tiny_llm_dirs, llm_tokenizer):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(3))
    trainer = build(make_config(tmp_path, tiny_llm_dirs("llama"), data))
    groups = [trainer.train_dataset[i] for i in range(3)]
    trainer.model.eval()
    loss, outputs = trainer.compute_loss(
        trainer.model, dict(trainer.data_collator(groups)), return_outputs=True
    )
    yes = llm_tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    model = trainer.model.get_base_model().backbone  # the causal LM inside the family model
    alone = []
    with torch.no_grad():  # each pair alone, unpadded: the full logits' "Yes" column at the last position
        for group in groups:
            rows = trainer.data_collator.encoder.encode([group.query] * 4, group.passages)
            alone.append([model(input_ids=torch.tensor([r])).logits[0, -1, yes].item() for r in rows])
    assert outputs["scores"].tolist() == [pytest.approx(row, abs=1e-5) for row in alone]
    expected = torch.nn.functional.cross_entropy(torch.tensor(alone), torch.zeros(3, dtype=torch.long))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_saved_adapter_and_merged_model_give_the_trainers_scores(tmp_path, tiny_llm_dirs):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(8))
    config = make_config(tmp_path, tiny_llm_dirs("llama"), data, num_train_epochs=2, merge_lora=True)
    trainer = build(config)
    trainer.train()
    trainer.save_model(config.training.output_dir)
    trainer.finish_saving(config.training.output_dir)
    out, merged = tmp_path / "out", tmp_path / "out" / "merged"
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))
    spec = RerankerSpec.load(out)
    assert isinstance(spec, LLMSpec) and spec.adapter is True and spec.prompt == DEFAULT_PROMPT
    assert spec.loss == {"loss": {"name": "grouped_cross_entropy"}}  # what trained it, for the model card
    assert RerankerSpec.load(merged).adapter is False

    groups = [trainer.train_dataset[i] for i in range(3)]
    pairs = [[g.query, p] for g in groups for p in g.passages]
    trained = batch_scores(trainer, groups)
    for folder in (out, merged):
        reranker = LLMReranker.from_pretrained(str(folder), device="cpu")
        assert_same_scores(reranker.compute_score(pairs, batch_size=5), trained)

    # the merged folder loads and scores with peft made unimportable
    script = f"""
import sys, json
sys.modules["peft"] = None
from rerankforge.inference import LLMReranker
print(json.dumps(LLMReranker.from_pretrained({str(merged)!r}, device="cpu").compute_score({pairs!r})))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert_same_scores(json.loads(result.stdout.strip().splitlines()[-1]), trained)


def test_a_continued_run_starts_from_the_saved_adapter(tmp_path, tiny_llm_dirs):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(8))
    first = make_config(tmp_path, tiny_llm_dirs("qwen2"), data, num_train_epochs=2)
    trainer = build(first)
    trainer.train()
    trainer.save_model(first.training.output_dir)
    groups = [trainer.train_dataset[i] for i in range(2)]
    before = batch_scores(trainer, groups)

    second = make_config(
        tmp_path, tiny_llm_dirs("qwen2"), data, adapter_name_or_path=first.training.output_dir,
        output_dir=str(tmp_path / "continued"),
    )  # fmt: skip
    continued = build(second)
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    loaded = {n: p for n, p in continued.model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved) > 0
    for (
        name,
        tensor,
    ) in saved.items():  # peft stores "...lora_A.weight", the live module "...lora_A.default.weight"
        assert torch.equal(loaded[name.replace(".weight", ".default.weight")].detach(), tensor)
    assert all(p.requires_grad for p in loaded.values())
    assert batch_scores(continued, groups) == pytest.approx(before, abs=1e-6)
    continued.train()


def test_gradient_checkpointing_with_lora_gives_the_same_gradients(tmp_path, tiny_llm_dirs, checkpoint_calls):
    calls = checkpoint_calls
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(2))
    grads = []
    folder = tiny_llm_dirs("llama")  # made (seeding torch) before the loop: both builds start from one state
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same fresh adapters both times
        trainer = build(make_config(tmp_path, folder, data, gradient_checkpointing=checkpointing))
        model = trainer.model
        if checkpointing:  # as Trainer.train() does, with the kwargs the config defaulted
            enable_checkpointing(model, checkpointing_kwargs(trainer.args))
        model.train()
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
        calls.clear()
        trainer.compute_loss(model, dict(batch)).backward()
        assert len(calls) == (2 if checkpointing else 0)  # one per decoder layer
        assert all(k.get("use_reentrant") is False for k in calls)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("lora_A" in n for n in grads[0])
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name
    assert any(g.abs().sum() > 0 for n, g in grads[1].items() if "lora_B" in n)


def test_yes_minus_no_is_stored_and_used_by_inference(tmp_path, tiny_llm_dirs, llm_tokenizer):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(4))
    config = make_config(tmp_path, tiny_llm_dirs("gemma2"), data, score="yes_minus_no")
    trainer = build(config)
    trainer.train()
    trainer.save_model(config.training.output_dir)
    spec = RerankerSpec.load(config.training.output_dir)
    assert spec.yes_token_id == llm_tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    assert spec.no_token_id == llm_tokenizer("No", add_special_tokens=False)["input_ids"][0]
    groups = [trainer.train_dataset[0]]
    reranker = LLMReranker.from_pretrained(config.training.output_dir, device="cpu")
    assert reranker.spec.score == "yes_minus_no"
    scores = reranker.compute_score([[groups[0].query, p] for p in groups[0].passages])
    assert_same_scores(scores, batch_scores(trainer, groups))


def test_a_records_prompt_replaces_the_default_in_training_rows(tmp_path, tiny_llm_dirs, llm_tokenizer):
    records = toy_records(2)
    records[0]["prompt"] = "Is B about A? Yes or No"
    data = write_jsonl(tmp_path / "train.jsonl", records)
    trainer = build(make_config(tmp_path, tiny_llm_dirs("llama"), data))
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    own = llm_tokenizer("Is B about A? Yes or No", add_special_tokens=False)["input_ids"]
    default = llm_tokenizer(DEFAULT_PROMPT, add_special_tokens=False)["input_ids"]
    assert batch["input_ids"][0, -len(own) :].tolist() == own
    assert batch["input_ids"][4, -len(default) :].tolist() == default


def flag_llm_reference_ids(tokenizer, query, passage, max_length, prompt=DEFAULT_PROMPT):
    """FlagEmbedding 1.4's FlagLLMReranker input, step by step as its compute_score builds it (transcribed,
    with transformers 4's `prepare_for_model(..., truncation="only_second")` written out as a slice)."""
    query_ids = tokenizer(
        "A: " + query, add_special_tokens=False, max_length=max_length * 3 // 4, truncation=True
    )
    passage_ids = tokenizer("B: " + passage, add_special_tokens=False, max_length=max_length, truncation=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    sep_ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    encode_max_length = max_length + len(sep_ids) + len(prompt_ids)
    first = [tokenizer.bos_token_id] + query_ids["input_ids"]
    second = (sep_ids + passage_ids["input_ids"])[: max(encode_max_length - len(first), 0)]
    return first + second + sep_ids + prompt_ids


def test_flag_llm_reranker_builds_flagembeddings_input_ids(tiny_llm_dirs, llm_tokenizer, monkeypatch):
    long_passage = "Some women with flip-flops on are walking along the beach. " * 40
    pairs = [
        ["what do women wear", "Some women walk."],
        ["what do women wear on the beach " * 20, long_passage],
    ]
    reranker = FlagLLMReranker(str(tiny_llm_dirs("llama")), devices="cpu")
    built = []
    original = reranker.chunk_encoder

    def recording(lengths, prompt):
        encode = original(lengths, prompt)
        return lambda chunk: (lambda ids: built.extend(ids) or ids)(encode(chunk))

    monkeypatch.setattr(reranker, "chunk_encoder", recording)
    for max_length in (512, 48):
        built.clear()
        reranker.compute_score(pairs, max_length=max_length)
        assert built == [flag_llm_reference_ids(llm_tokenizer, q, p, max_length) for q, p in pairs]
    assert len(built[1]) < len(flag_llm_reference_ids(llm_tokenizer, *pairs[1], 512))  # the cut was exercised


def test_plain_causal_lm_folder_scores_with_the_yes_logit_and_half_precision_falls_back_on_cpu(
    tiny_llm_dirs, llm_tokenizer
):
    folder = tiny_llm_dirs("llama")
    reranker = FlagLLMReranker(str(folder), use_fp16=True, devices="cpu")
    assert reranker.model.dtype == torch.float32
    score = reranker.compute_score(["what do women wear", "Some women walk."])
    assert isinstance(score, float)
    ids = flag_llm_reference_ids(llm_tokenizer, "what do women wear", "Some women walk.", 512)
    yes = llm_tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        expected = reranker.model.backbone(input_ids=torch.tensor([ids])).logits[0, -1, yes].item()
    assert score == pytest.approx(expected, abs=1e-5)
    assert reranker.compute_score(
        ["what do women wear", "Some women walk."], normalize=True
    ) == pytest.approx(torch.sigmoid(torch.tensor(expected)).item(), abs=1e-6)


def test_llm_settings_are_checked_before_any_weights_load(tmp_path, tiny_llm_dirs):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(2))
    with pytest.raises(ValueError, match="score must be one of yes, yes_minus_no"):
        make_config(tmp_path, tiny_llm_dirs("llama"), data, score="logit")
    with pytest.raises(ValueError, match="torch_dtype must be one of"):
        make_config(tmp_path, tiny_llm_dirs("llama"), data, torch_dtype="int8")
    with pytest.raises(ValueError, match="flash_attention_2 needs the flash-attn package"):
        build(make_config(tmp_path, tiny_llm_dirs("llama"), data, attn_implementation="flash_attention_2"))
    with pytest.raises(ValueError, match="'Absolutely' is \\d+ tokens"):
        build(make_config(tmp_path, tiny_llm_dirs("llama"), data, yes_token="Absolutely"))


def grouped_loss(scores: list[float], group_size: int) -> float:
    """The grouped cross-entropy (positive first in each group) of flat scores."""
    groups = torch.tensor(scores).view(-1, group_size)
    return torch.nn.functional.cross_entropy(groups, torch.zeros(len(groups), dtype=torch.long)).item()


def test_the_llm_family_trains_end_to_end_through_train(tmp_path, tiny_llm_dirs, monkeypatch):
    import rerankforge.trainer.training_run as train_module

    built = []  # the trainer train() builds, to compare the saved folder with
    monkeypatch.setattr(
        train_module, "build_trainer", lambda *a, **k: built.append(build_trainer(*a, **k)) or built[-1]
    )
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(6))
    config = make_config(tmp_path, tiny_llm_dirs("llama"), data, family="llm")
    out = train(config)
    assert (out / "adapter_model.safetensors").is_file() and (out / "rerankforge.json").is_file()
    (trainer,) = built
    # 3 micro-batches of 2 queries, with the family's 16 accumulated: one optimizer step
    assert trainer.state.global_step == 1

    groups = [trainer.train_dataset[i] for i in range(6)]
    pairs = [[g.query, p] for g in groups for p in g.passages]
    saved = LLMReranker.from_pretrained(str(out), device="cpu").compute_score(pairs)
    untrained = LLMReranker.from_pretrained(str(tiny_llm_dirs("llama")), device="cpu").compute_score(pairs)
    assert_same_scores(saved, batch_scores(trainer, groups))  # the folder is the trained model
    assert saved != pytest.approx(untrained, abs=1e-3)  # and it trained
    assert grouped_loss(saved, 4) < grouped_loss(untrained, 4)  # towards the positives


@pytest.mark.parametrize("module", ["norm", "lm_head"])
def test_modules_to_save_train_in_full_and_travel_with_the_adapter(tmp_path, tiny_llm_dirs, module):
    # lm_head is a top-level child of the causal LM: peft's wrapper must reach the backbone's forward too
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(4))
    config = make_config(tmp_path, tiny_llm_dirs("llama"), data, modules_to_save=[module])
    trainer = build(config)
    trainer.train()
    trainer.save_model(config.training.output_dir)
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    name = "model.norm.weight" if module == "norm" else "lm_head.weight"
    found = [key for key in saved if key.endswith(name)]
    assert found, sorted(saved)
    base = load_file(tiny_llm_dirs("llama") / "model.safetensors")[name]
    assert not torch.equal(saved[found[0]], base)  # it trained
    groups = [trainer.train_dataset[0]]
    reranker = load_reranker(config.training.output_dir, device="cpu")
    assert isinstance(reranker, LLMReranker)
    scores = reranker.compute_score([[groups[0].query, p] for p in groups[0].passages])
    assert_same_scores(scores, batch_scores(trainer, groups))


def test_scores_are_float32_when_the_model_runs_in_bfloat16(tiny_llm_dirs):
    pairs = [["what do women wear", "Some women walk."], ["where is the apple", "the apple is here"]]
    full = LLMReranker.from_pretrained(str(tiny_llm_dirs("llama")), device="cpu")
    half = LLMReranker.from_pretrained(str(tiny_llm_dirs("llama")), device="cpu", dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16
    sequences = half.encoder(half.lengths).encode([q for q, _ in pairs], [p for _, p in pairs])
    with torch.no_grad():
        raw = score_last_token(half.model.backbone, pad_left(sequences, 2), half.yes_token_id)
    assert raw.dtype == torch.float32 and torch.isfinite(raw).all()
    expected, got = full.compute_score(pairs), half.compute_score(pairs)
    gap = abs(expected[0] - expected[1])
    assert gap > 0.02  # the pairs score apart: bf16's rounding (~1e-3 here) must stay well inside that
    assert got == pytest.approx(expected, abs=gap / 10)
    assert (got[0] < got[1]) == (expected[0] < expected[1])  # and keeps their order

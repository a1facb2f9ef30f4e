"""Layerwise reranker: heads on several layers, a loss summed over them, inference that stops early."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_decoder, write_jsonl
from safetensors.torch import load_file
from score_checks import assert_same_scores
from test_cross_encoder_training import toy_records
from test_evaluation import beir_slice  # noqa: F401  (the fixture)

from rerankforge.data_tools import load_train_dataset
from rerankforge.inference import LayerWiseFlagLLMReranker, LayerwiseReranker
from rerankforge.inference.auto import load_reranker
from rerankforge.inference.modeling.layerwise import LayerwiseRerankerModel, decoder_layers
from rerankforge.inference.modeling.llm import score_last_token
from rerankforge.inference.modeling.llm_inputs import LLMPromptEncoder
from rerankforge.inference.modeling.spec import LayerwiseSpec
from rerankforge.trainer.families import build_trainer
from rerankforge.trainer.run_config import RunConfig
from rerankforge.trainer.training_run import prepare_data


@pytest.fixture(scope="module")
def four_layer_llama(tmp_path_factory, llm_tokenizer):
    folder = tmp_path_factory.mktemp("tiny-llama-4")
    tiny_decoder("llama", len(llm_tokenizer), num_layers=4).save_pretrained(folder)
    llm_tokenizer.save_pretrained(folder)
    return folder


def make_config(tmp_path, model_dir, data, **overrides) -> RunConfig:
    settings = dict(
        model_name_or_path=str(model_dir), train_data=[str(data)], output_dir=str(tmp_path / "out"),
        start_layer=2, train_group_size=4, query_max_len=16, passage_max_len=32, per_device_train_batch_size=2,
        gradient_accumulation_steps=1, num_train_epochs=1, learning_rate=5e-3, lora_rank=4, lora_alpha=8, lora_dropout=0.0, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, dataloader_pin_memory=False, seed=0,
    )  # fmt: skip
    settings.update(overrides)
    return RunConfig.from_settings("make_config", **{"family": "layerwise", **settings})


def build(config, eval_set=None):
    records = load_train_dataset(
        config.data.train_data, config.training.train_group_size, config.training.needs_teacher_scores
    )
    torch.manual_seed(0)
    return build_trainer(config.training, records, eval_set)


def encoded_batch(tokenizer, pairs):
    encoder = LLMPromptEncoder(tokenizer, 16, 32)
    return encoder.pad_left(encoder.encode([q for q, _ in pairs], [p for _, p in pairs]))


def layerwise_model(lm, layers: list[int], yes_token_id: int) -> LayerwiseRerankerModel:
    spec = LayerwiseSpec(query_max_len=16, passage_max_len=32, max_length=48, yes_token_id=yes_token_id,
                         layers=layers, num_layers=len(decoder_layers(lm)))  # fmt: skip
    return LayerwiseRerankerModel(lm, spec)


PAIRS = [
    ["where is the apple", "the apple is here, apple indeed"],
    ["what do women wear", "Some women walk."],
]


@pytest.mark.parametrize("architecture", ["llama", "gemma2"])
def test_untrained_last_layer_score_is_the_llm_familys_yes_logit(llm_tokenizer, architecture):
    lm = tiny_decoder(architecture, len(llm_tokenizer), num_layers=3)
    yes = llm_tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    model = layerwise_model(lm, [1, 2, 3], yes).eval()
    batch = encoded_batch(llm_tokenizer, PAIRS)
    with torch.no_grad():
        layerwise = model(batch["input_ids"], batch["attention_mask"])
        yes_logit = score_last_token(lm, batch, yes)
    assert layerwise["layer3"].tolist() == pytest.approx(
        yes_logit.tolist(), abs=1e-5
    )  # soft-capped for gemma2
    assert not torch.allclose(layerwise["layer1"], layerwise["layer3"])


def test_cutoff_k_never_calls_the_layers_above_k(llm_tokenizer):
    lm = tiny_decoder("llama", len(llm_tokenizer), num_layers=4)
    model = layerwise_model(lm, [2, 3, 4], 5).eval()
    calls = [0] * 4
    for index, layer in enumerate(decoder_layers(lm)):
        layer.register_forward_pre_hook(lambda module, args, i=index: calls.__setitem__(i, calls[i] + 1))
    batch = encoded_batch(llm_tokenizer, PAIRS)
    with torch.no_grad():
        early = model(batch["input_ids"], batch["attention_mask"], layers=[2])
    assert calls == [1, 1, 0, 0]
    with torch.no_grad():
        full = model(batch["input_ids"], batch["attention_mask"])
    assert calls == [2, 2, 1, 1]
    assert early["layer2"].tolist() == pytest.approx(
        full["layer2"].tolist(), abs=1e-6
    )  # stopping early changes nothing


@pytest.mark.parametrize("self_distill_weight", [0.0, 0.5])
def test_summed_loss_equals_the_per_layer_hand_computations(tmp_path, four_layer_llama, self_distill_weight):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(3))
    trainer = build(make_config(tmp_path, four_layer_llama, data, self_distill_weight=self_distill_weight))
    groups = [trainer.train_dataset[i] for i in range(3)]
    batch = trainer.data_collator(groups)
    trainer.model.eval()
    loss, outputs = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
    assert list(outputs["scores"]) == ["layer2", "layer3", "layer4"]
    with torch.no_grad():  # each group alone, every layer
        alone = [trainer.model(**{k: trainer.data_collator([g])[k] for k in ("input_ids", "attention_mask")})
                 for g in groups]  # fmt: skip
    target = torch.zeros(3, dtype=torch.long)
    expected = 0.0
    last = torch.stack([a["layer4"] for a in alone])
    for layer in ("layer2", "layer3", "layer4"):
        scores = torch.stack([a[layer] for a in alone])
        assert outputs["scores"][layer].detach() == pytest.approx(scores, abs=1e-5)
        part = torch.nn.functional.cross_entropy(scores, target)
        if self_distill_weight and layer != "layer4":
            part = part + self_distill_weight * torch.nn.functional.kl_div(
                scores.log_softmax(-1), last.log_softmax(-1), log_target=True, reduction="batchmean"
            )
        expected += part.item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_training_changes_every_selected_head_and_no_base_weight(tmp_path, four_layer_llama):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(8))
    trainer = build(make_config(tmp_path, four_layer_llama, data, num_train_epochs=2, train_layers=[2, 4]))
    heads_before = {k: h.weight.detach().clone() for k, h in trainer.model.heads.items()}
    base = load_file(four_layer_llama / "model.safetensors")
    trainer.train()
    changed = {k for k, h in trainer.model.heads.items() if not torch.equal(h.weight, heads_before[k])}
    assert changed == {"2", "4"}  # layer 3 has a head but is not trained
    base_after = trainer.model.get_base_model().state_dict()
    for name, tensor in base.items():
        module, leaf = name.rsplit(".", 1)
        key = name if name in base_after else f"{module}.base_layer.{leaf}"
        assert torch.equal(base_after[key], tensor), f"base weight {name} changed"
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert all({"loss_layer2", "loss_layer4"} <= set(e) for e in logged)
    assert logged[0]["loss"] == pytest.approx(logged[0]["loss_layer2"] + logged[0]["loss_layer4"], abs=2e-3)


def test_saved_model_scores_equal_the_trainers_at_every_layer(tmp_path, four_layer_llama):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(8))
    config = make_config(tmp_path, four_layer_llama, data, num_train_epochs=2, merge_lora=True)
    trainer = build(config)
    trainer.train()
    trainer.save_model(config.training.output_dir)
    trainer.finish_saving(config.training.output_dir)
    out = tmp_path / "out"
    assert {p.name for p in out.glob("*.safetensors")} == {"adapter_model.safetensors"}  # the heads inside
    assert any(".heads.4." in key for key in load_file(out / "adapter_model.safetensors"))
    groups = [trainer.train_dataset[i] for i in range(3)]
    pairs = [[g.query, p] for g in groups for p in g.passages]
    trainer.model.eval()
    with torch.no_grad():
        batch = trainer.data_collator(groups)
        trained = trainer.model(batch["input_ids"], batch["attention_mask"])
    for folder in (out, out / "merged"):
        reranker = load_reranker(str(folder), device="cpu")
        assert isinstance(reranker, LayerwiseReranker)
        per_layer = reranker.compute_score(pairs, cutoff_layers=[2, 3, 4], batch_size=5)
        for layer, scores in zip([2, 3, 4], per_layer, strict=True):
            assert_same_scores(scores, trained[f"layer{layer}"].tolist())
        assert_same_scores(reranker.compute_score(pairs), trained["layer4"].tolist())  # default: last
    flag = LayerWiseFlagLLMReranker(str(out), devices="cpu")
    assert flag.compute_score(pairs[0], cutoff_layers=[3]) == pytest.approx(
        trained["layer3"][0].item(), abs=1e-4
    )
    with pytest.raises(ValueError, match=r"cutoff_layers \[1\] have no head"):
        flag.compute_score(pairs, cutoff_layers=[1])


def test_continued_training_starts_from_the_saved_adapter_and_heads(tmp_path, four_layer_llama):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(8))
    first = make_config(tmp_path, four_layer_llama, data, num_train_epochs=2)
    trainer = build(first)
    trainer.train()
    trainer.save_model(first.training.output_dir)
    second = make_config(tmp_path, four_layer_llama, data, adapter_name_or_path=first.training.output_dir,
                         output_dir=str(tmp_path / "again"))  # fmt: skip
    continued = build(second)
    for k, head in trainer.model.heads.items():
        assert torch.equal(continued.model.heads[k].weight, head.weight)
    trainer.model.eval()
    continued.model.eval()
    batch = trainer.data_collator([trainer.train_dataset[0]])
    with torch.no_grad():
        a = trainer.model(batch["input_ids"], batch["attention_mask"])
        b = continued.model(batch["input_ids"], batch["attention_mask"])
    assert all(a[k].tolist() == pytest.approx(b[k].tolist(), abs=1e-6) for k in a)


def test_evaluation_reports_ndcg_at_every_layer(tmp_path, four_layer_llama, beir_slice):  # noqa: F811
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(4))
    config = make_config(tmp_path, four_layer_llama, data, eval_data=str(beir_slice), eval_top_k=10,
                         per_device_eval_batch_size=16)  # fmt: skip
    eval_set = prepare_data(config).eval_set
    trainer = build(config, eval_set)
    metrics = trainer.evaluate()
    assert metrics["eval_ndcg@10"] == metrics["eval_layer4_ndcg@10"]
    # each layer's number is that layer's ranking: the saved model's scores stopped at that layer
    trainer.save_model(config.training.output_dir)
    reranker = LayerwiseReranker.from_pretrained(config.training.output_dir, device="cpu")
    pairs = eval_set.pairs()
    by_layer = {}
    for layer in (2, 3, 4):
        scores = reranker.compute_score(eval_set.texts(pairs), cutoff_layers=[layer], batch_size=16)
        by_layer[layer] = eval_set.metrics(eval_set.run_from_scores(pairs, scores))["ndcg@10"]
        assert metrics[f"eval_layer{layer}_ndcg@10"] == pytest.approx(by_layer[layer], abs=1e-6)
    # the layers rank differently, so a layer reported with another's scores would show
    assert len({round(v, 6) for v in by_layer.values()}) == 3


def test_train_writes_the_before_after_table_by_layer(tmp_path, four_layer_llama, beir_slice):  # noqa: F811
    from rerankforge.trainer.training_run import train

    data = write_jsonl(tmp_path / "train.jsonl", toy_records(4))
    config = make_config(tmp_path, four_layer_llama, data, family="layerwise", eval_data=str(beir_slice),
                         eval_top_k=10, per_device_eval_batch_size=16)  # fmt: skip
    out = train(config)
    table = (out / "eval_table.md").read_text()
    assert "nDCG@10 by layer" in table
    rows = [line for line in table.splitlines() if line.startswith(("| 2 |", "| 3 |", "| 4 |"))]
    assert len(rows) == 3 and all(line.count("|") == 4 for line in rows)  # layer, before, after


def test_load_best_model_at_end_restores_the_best_checkpoints_heads_and_adapter(
    tmp_path,
    four_layer_llama,
    beir_slice,  # noqa: F811
):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(8))
    config = make_config(
        tmp_path, four_layer_llama, data, eval_data=str(beir_slice), eval_top_k=10, per_device_eval_batch_size=16,
        num_train_epochs=2, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
        load_best_model_at_end=True, metric_for_best_model="ndcg@10", greater_is_better=True,
    )  # fmt: skip
    trainer = build(config, prepare_data(config).eval_set)
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None
    adapter = load_file(
        f"{best}/adapter_model.safetensors"
    )  # the adapter and, as peft's modules_to_save, the heads
    for k, head in trainer.model.heads.items():
        assert torch.equal(head.weight.detach(), adapter[f"base_model.model.heads.{k}.weight"])
    live = dict(trainer.model.named_parameters())
    for name, tensor in adapter.items():
        if ".heads." in name:
            name = name.replace(".weight", ".modules_to_save.default.weight").replace(
                ".bias", ".modules_to_save.default.bias"
            )
            assert torch.equal(live[name].detach(), tensor)
        else:
            assert torch.equal(live[name.replace(".weight", ".default.weight")].detach(), tensor)


def test_layerwise_flag_reranker_uses_flagembeddings_budgets_for_max_length(
    tmp_path, four_layer_llama, llm_tokenizer
):
    from test_llm_training import flag_llm_reference_ids

    data = write_jsonl(tmp_path / "train.jsonl", toy_records(2))
    config = make_config(tmp_path, four_layer_llama, data)
    trainer = build(config)
    trainer.save_model(config.training.output_dir)
    flag = LayerWiseFlagLLMReranker(config.training.output_dir, devices="cpu")
    long_passage = "Some women with flip-flops on are walking along the beach. " * 40
    pairs = [["what do women wear on the beach " * 20, long_passage]]
    built = []
    original = flag.chunk_encoder

    def recording(lengths, prompt):
        encode = original(lengths, prompt)
        return lambda chunk: (lambda ids: built.extend(ids) or ids)(encode(chunk))

    flag.chunk_encoder = recording
    flag.compute_score(pairs, max_length=48)
    assert built == [flag_llm_reference_ids(llm_tokenizer, *pairs[0], 48)]


def test_the_layerwise_objective_and_its_temperature_are_checked_with_the_config(tmp_path, four_layer_llama):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(2))
    with pytest.raises(
        ValueError, match="temperature must be > 0"
    ):  # self-distillation's, before any weights
        make_config(tmp_path, four_layer_llama, data, self_distill_weight=0.5, distill_temperature=0.0)
    # the temperature sets self-distillation even when the teacher term is margin_mse, which takes none
    config = make_config(tmp_path, four_layer_llama, data, self_distill_weight=0.5, distill_loss="margin_mse",
                         distill_temperature=2.0)  # fmt: skip
    objective = config.training.build_objective()
    assert objective.self_distillation.temperature == 2.0 and objective.objective.distill.name == "margin_mse"


def test_full_fine_tuning_keeps_the_heads_among_the_weights_and_resumes_them(
    tmp_path, four_layer_llama, capfd
):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(8))
    settings = dict(use_lora=False, train_layers=[2, 3], per_device_train_batch_size=2, save_strategy="steps",
                    save_steps=2, learning_rate=1e-3)  # fmt: skip
    straight = build(make_config(tmp_path, four_layer_llama, data, **settings))
    straight.train()
    out = tmp_path / "out"
    straight.save_model(str(out))
    saved = load_file(out / "model.safetensors")
    assert {k for k in saved if k.startswith("heads.")} == {
        f"heads.{k}.{n}" for k in (2, 3, 4) for n in ("weight", "bias")
    }
    assert not (out / "adapter_config.json").exists()
    base = load_file(four_layer_llama / "model.safetensors")
    for name in (
        "lm_head.weight",
        "model.layers.3.mlp.down_proj.weight",
    ):  # no loss reaches them: left as they were
        assert torch.equal(saved[name], base[name])
    assert not torch.equal(
        saved["model.layers.1.mlp.down_proj.weight"], base["model.layers.1.mlp.down_proj.weight"]
    )

    straight.model.eval()
    batch = straight.data_collator([straight.train_dataset[0]])
    with torch.no_grad():
        trained = straight.model(batch["input_ids"], batch["attention_mask"])
    pairs = [[straight.train_dataset[0].query, p] for p in straight.train_dataset[0].passages]
    capfd.readouterr()
    reranker = LayerwiseReranker.from_pretrained(str(out), device="cpu")
    assert (
        "UNEXPECTED" not in capfd.readouterr().err
    )  # the heads are ours to load: no transformers report of them
    for layer, scores in zip([2, 3], reranker.compute_score(pairs, cutoff_layers=[2, 3]), strict=True):
        assert_same_scores(scores, trained[f"layer{layer}"].tolist())

    # the Trainer resumes it through load_state_dict: the heads come back with the weights
    resumed = build(make_config(tmp_path, four_layer_llama, data, **settings))
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    for name, tensor in straight.model.state_dict().items():
        assert torch.allclose(resumed.model.state_dict()[name], tensor, atol=1e-6), name

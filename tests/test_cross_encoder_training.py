"""Cross-encoder training with the real `transformers.Trainer` on tiny random models."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from conftest import write_jsonl
from score_checks import assert_same_scores
from transformers import TrainingArguments

from rerankforge.data_tools import load_train_dataset
from rerankforge.inference import Reranker
from rerankforge.inference.modeling.cross_encoder import score_pairs
from rerankforge.trainer.families import build_trainer
from rerankforge.trainer.run_config import RunConfig

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "music",
    "paper",
    "garden",
    "window",
    "silver",
    "orange",
    "forest",
    "bridge",
]


TRAINING_ARGUMENT_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}
# transformers up to 5.17 names it gradient_checkpointing, later releases activation_checkpointing
CHECKPOINTING = (
    "activation_checkpointing"
    if "activation_checkpointing" in TRAINING_ARGUMENT_FIELDS
    else "gradient_checkpointing"
)


def toy_records(n_queries: int, n_negatives: int = 6, seed: int = 0) -> list[dict]:
    """A task a 2-layer model can learn: the positive repeats the query's word, negatives do not."""
    rng = random.Random(seed)
    records = []
    for i in range(n_queries):
        word = WORDS[i % len(WORDS)]
        others = [w for w in WORDS if w != word]
        records.append(
            {
                "query": f"where is the {word}",
                "pos": [f"the {word} is here, {word} indeed"],
                "neg": [
                    f"the {rng.choice(others)} is there, {rng.choice(others)} maybe"
                    for _ in range(n_negatives)
                ],
            }
        )
    return records


def make_config(tmp_path, model_dir, data, **overrides) -> RunConfig:
    settings = dict(
        model_name_or_path=str(model_dir),
        train_data=[str(data)],
        output_dir=str(tmp_path / "out"),
        train_group_size=4,
        query_max_len=16,
        passage_max_len=32,
        per_device_train_batch_size=4,
        num_train_epochs=1,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
    )
    settings.update(overrides)
    return RunConfig.from_settings("make_config", **{"family": "cross_encoder", **settings})


def build(config):
    records = load_train_dataset(
        config.data.train_data, config.training.train_group_size, config.training.needs_teacher_scores
    )
    return build_trainer(config.training, records)


def test_training_changes_parameters_and_lowers_the_loss_on_a_learnable_task(tmp_path, tiny_bert_dir):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(24))
    trainer = build(make_config(tmp_path, tiny_bert_dir, data, num_train_epochs=6, learning_rate=5e-3))
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])]
    assert "classifier.weight" in changed and any("encoder.layer.0" in name for name in changed)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 36
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert first > 0.8  # the random start ranks at chance (ln(4) = 1.386 for flat scores; spread ones vary)
    assert last < 0.5 * first


def test_a_last_batch_smaller_than_the_others_trains(tmp_path, tiny_bert_dir):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(5))
    trainer = build(make_config(tmp_path, tiny_bert_dir, data, per_device_train_batch_size=2))
    assert trainer.args.dataloader_drop_last is False
    sizes = [batch["input_ids"].shape[0] for batch in trainer.get_train_dataloader()]
    assert sizes == [8, 8, 4]  # 2, 2 and 1 groups of 4 pairs
    result = trainer.train()
    assert trainer.state.global_step == 3
    assert torch.isfinite(torch.tensor(result.training_loss))


def test_loss_reshapes_by_the_batch_it_receives(tmp_path, tiny_bert_dir):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(3))
    trainer = build(make_config(tmp_path, tiny_bert_dir, data))
    groups = [trainer.train_dataset[i] for i in range(3)]
    batch = trainer.data_collator(groups)
    trainer.model.eval()  # no dropout: each group scored alone must give the same numbers
    loss, outputs = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
    assert outputs["scores"].shape == (3, 4)
    with torch.no_grad():  # row i of the grouped scores is group i, positive first
        alone = [trainer.model.score(trainer.data_collator([g])).tolist() for g in groups]
    # scores of the random tiny model differ by ~1e-5, so the tolerance must be far below that
    assert outputs["scores"].flatten().tolist() == pytest.approx(sum(alone, []), abs=1e-7)
    expected = torch.nn.functional.cross_entropy(torch.tensor(alone), torch.zeros(3, dtype=torch.long))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_distillation_trains_from_teacher_scores(tmp_path, tiny_bert_dir):
    records = toy_records(8)
    for record in records:  # each teacher score is a function of its passage's text: alignment is checkable
        record["pos_scores"] = [float(len(p)) for p in record["pos"]]
        record["neg_scores"] = [float(len(n)) for n in record["neg"]]
    data = write_jsonl(tmp_path / "train.jsonl", records)
    trainer = build(
        make_config(tmp_path, tiny_bert_dir, data, knowledge_distillation=True, distill_weight=0.5)
    )
    groups = [trainer.train_dataset[i] for i in range(2)]
    batch = trainer.data_collator(groups)
    assert batch["teacher_scores"].tolist() == [[float(len(p)) for p in g.passages] for g in groups]
    loss, outputs = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
    scores, teacher = outputs["scores"], batch["teacher_scores"]
    ce = torch.nn.functional.cross_entropy(scores, torch.zeros(2, dtype=torch.long))
    kl = torch.nn.functional.kl_div(
        scores.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="batchmean"
    )
    assert loss.item() == pytest.approx((ce + 0.5 * kl).item(), rel=1e-5)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all({"loss_ranking", "loss_distill"} <= set(entry) for entry in logged)
    for entry in logged:  # each part is logged as loss is: the mean over the steps since the last log
        assert entry["loss"] == pytest.approx(entry["loss_ranking"] + 0.5 * entry["loss_distill"], rel=1e-4)


def test_loss_parts_are_averaged_like_loss_under_gradient_accumulation(tmp_path, tiny_bert_dir):
    records = toy_records(10)
    for record in records:
        record["pos_scores"] = [3.0]
        record["neg_scores"] = [float(i % 3) for i in range(len(record["neg"]))]
    data = write_jsonl(tmp_path / "train.jsonl", records)
    # 10 queries in batches of 4, 4 and 2, two batches a step: each epoch ends with a step of one batch, and
    # each log (every 2 steps) spans a step of two batches and one of one
    config = make_config(tmp_path, tiny_bert_dir, data, distill_loss="margin_mse", distill_weight=0.25,
                         gradient_accumulation_steps=2, num_train_epochs=2, logging_steps=2)  # fmt: skip
    trainer = build(config)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2
    for entry in logged:
        assert entry["loss"] == pytest.approx(entry["loss_ranking"] + 0.25 * entry["loss_distill"], rel=1e-4)


def test_saved_checkpoint_scores_equal_the_training_model(tmp_path, tiny_bert_dir):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(8))
    config = make_config(tmp_path, tiny_bert_dir, data, num_train_epochs=2)
    trainer = build(config)
    trainer.train()
    trainer.save_model(config.training.output_dir)
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and (out / "rerankforge.json").is_file()
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))  # no pickles: safetensors and JSON
    assert (out / "training_args.json").is_file()

    groups = [trainer.train_dataset[i] for i in range(4)]
    pairs = [[g.query, p] for g in groups for p in g.passages]
    batch = trainer.data_collator(groups)
    trainer.model.eval()
    with torch.no_grad():
        trained = trainer.model.score(batch).tolist()
    reranker = Reranker.from_pretrained(str(out), device="cpu")
    assert reranker.lengths == trainer.data_collator.lengths
    assert_same_scores(reranker.compute_score(pairs, batch_size=5), trained)


def test_group_size_one_is_refused_it_would_train_nothing(tmp_path, tiny_bert_dir):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(2))
    with pytest.raises(ValueError, match="train_group_size must be >= 2"):
        make_config(tmp_path, tiny_bert_dir, data, train_group_size=1)


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ({"train_sampling_strategy": "group_by_length"}, "train_sampling_strategy=group_by_length"),
        ({"batch_eval_metrics": True}, "batch_eval_metrics"),
        ({"eval_do_concat_batches": False}, "eval_do_concat_batches"),
    ],
)
def test_trainer_options_that_would_break_groups_or_ranking_metrics_are_refused(
    tmp_path, tiny_bert_dir, option, named
):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(2))
    with pytest.raises(ValueError, match=f"{named} is not supported"):
        make_config(tmp_path, tiny_bert_dir, data, **option)


def test_each_epoch_draws_new_negatives_through_the_trainer(tmp_path, tiny_bert_dir, monkeypatch):
    from rerankforge.data_tools.grouping import GroupedDataset

    seen: list[tuple[int, tuple[str, ...]]] = []
    original = GroupedDataset.__getitem__

    def recording_getitem(self, index):
        group = original(self, index)
        seen.append((self.epoch, tuple(group.passages)))
        return group

    monkeypatch.setattr(GroupedDataset, "__getitem__", recording_getitem)
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(4, n_negatives=12))
    build(make_config(tmp_path, tiny_bert_dir, data, num_train_epochs=3, train_group_size=3)).train()
    by_epoch = {e: sorted(p for ep, p in seen if ep == e) for e in (0, 1, 2)}
    assert [len(by_epoch[e]) for e in (0, 1, 2)] == [4, 4, 4]  # set before each epoch's first fetch
    assert by_epoch[0] != by_epoch[1] and by_epoch[1] != by_epoch[2]


def test_xlmr_with_512_plus_512_is_clipped_to_its_positions_and_trains(tmp_path, tiny_xlmr_dir):
    long_text = " ".join(["the women walk along a beach wearing flip flops"] * 80)
    records = [{"query": long_text, "pos": [long_text], "neg": [long_text, "a short one"]} for _ in range(2)]
    data = write_jsonl(tmp_path / "train.jsonl", records)
    config = make_config(
        tmp_path, tiny_xlmr_dir, data, query_max_len=512, passage_max_len=512, train_group_size=3
    )
    trainer = build(config)
    assert trainer.data_collator.lengths.max_length == 512
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert batch["input_ids"].shape[1] == 512
    assert "token_type_ids" not in batch
    trainer.train()
    trainer.save_model(config.training.output_dir)
    scores = Reranker.from_pretrained(config.training.output_dir, device="cpu").compute_score(
        [[long_text, long_text]] * 2
    )
    assert len(scores) == 2


def test_length_sorted_chunks_give_the_same_scores_gradients_and_training(tmp_path, tiny_bert_dir):
    """Slices cut to their own longest pair: same scores and gradients as one forward, less padding."""
    import json
    import shutil

    from rerankforge.inference.modeling.cross_encoder import score_pairs_by_length

    folder = tmp_path / "no-dropout"
    shutil.copytree(tiny_bert_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    records = toy_records(8)
    for i, record in enumerate(records):  # lengths from a few tokens to the 32-token passage budget
        record["neg"] = [" ".join([record["neg"][j]] * (1 + (i + j) % 5)) for j in range(len(record["neg"]))]
    data = write_jsonl(tmp_path / "train.jsonl", records)

    trainer = build(make_config(tmp_path, folder, data))
    assert trainer.args.forward_chunks == 4  # auto on the CPU
    batch = next(iter(trainer.get_train_dataloader()))
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < lengths.max() - 8  # the batch really has rows of different lengths
    model = trainer.model.backbone  # the transformers model inside the cross-encoder's model object
    whole = score_pairs(model, batch)
    (whole * torch.arange(len(whole))).sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    sliced = score_pairs_by_length(model, batch, chunks=3)
    (sliced * torch.arange(len(sliced))).sum().backward()
    assert torch.allclose(sliced, whole, atol=1e-5)  # in the batch's order
    for name, grad in expected_grads.items():
        assert torch.allclose(model.get_parameter(name).grad, grad, atol=1e-5), name
    model.zero_grad()

    def losses(chunks: int) -> list[float]:
        run = build(make_config(tmp_path / str(chunks), folder, data, length_sorted_chunks=chunks))
        run.train()
        return [entry["loss"] for entry in run.state.log_history if "loss" in entry]

    assert losses(3) == pytest.approx(losses(1), abs=1e-5)


@pytest.mark.parametrize(("on", "reentrant", "chunks"), [(False, None, 4), (True, False, 4), (True, True, 1)])
def test_cross_encoder_slices_follow_the_checkpointing_settings(tmp_path, on, reentrant, chunks):
    """transformers 5.17 has no activation_checkpointing_kwargs: reading it failed before the first step
    (so on the GPU machine's image, cross-encoder training could not start)."""
    settings = {CHECKPOINTING: on}
    if reentrant is not None:
        settings[f"{CHECKPOINTING}_kwargs"] = {"use_reentrant": reentrant}
    config = make_config(tmp_path, "model", "data.jsonl", **settings)
    assert (
        config.training.forward_chunks == chunks
    )  # 4 length-sorted slices on the CPU unless reentrant checkpointing


def test_a_cross_encoder_trains_with_checkpointing_switched_on_by_the_trainer(
    tmp_path, tiny_bert_dir, checkpoint_calls
):
    calls = checkpoint_calls
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(4))
    config = make_config(tmp_path, tiny_bert_dir, data, max_steps=2, **{CHECKPOINTING: True})
    trainer = build(config)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    # each step's forward runs both of the tiny BERT's layers through checkpoint, in every length-sorted slice
    assert len(calls) == 2 * 2 * config.training.forward_chunks
    assert all(k.get("use_reentrant") is False for k in calls)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())

"""What every registered loss must do, checked for each: the registry, its settings, invariances, monotonicity,
stable gradients, float32, the objective's parts, and training the learnable toy task."""

from __future__ import annotations

import pytest
import torch
from conftest import write_jsonl
from loss_cases import tensors
from test_cross_encoder_training import build, make_config, toy_records

from rerankforge.trainer.losses import (
    LOSSES,
    RankingObjective,
    build_objective,
    distill_losses,
    get_loss,
    loss_settings,
)

NAMES = list(LOSSES)
# raising the positive's score lowers these losses wherever it starts (the others regress towards a target:
# softmax(labels) for listnet, the teacher for the distillation losses; lambda_loss's weights follow the ranking)
MONOTONE_EVERYWHERE = {"grouped_cross_entropy", "bce", "ranknet", "listmle", "plistmle"}


def call(loss, scores, teacher):
    return loss(scores, teacher) if loss.needs_teacher_scores else loss(scores)


def test_the_registry_has_the_documented_names():
    assert {"grouped_cross_entropy", "bce", "ranknet", "lambda_loss", "listnet", "listmle", "plistmle",
            "margin_mse", "kl"} <= set(NAMES)  # fmt: skip
    assert all(LOSSES[name].name == name for name in NAMES)


def test_an_unknown_name_or_setting_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match="unknown loss 'lambdaloss'; choose one of: grouped_cross_entropy, bce"
    ):
        get_loss("lambdaloss")
    with pytest.raises(
        ValueError, match="loss 'lambda_loss' takes no setting kk; its settings: weighting, k, sigma"
    ):
        get_loss("lambda_loss", kk=3)
    with pytest.raises(ValueError, match="takes no setting k; its settings: none"):
        get_loss("grouped_cross_entropy", k=3)


@pytest.mark.parametrize("name", NAMES)
def test_the_config_dict_names_every_setting_and_rebuilds_the_same_loss(name):
    loss = get_loss(name)
    config = loss.get_config_dict()
    assert config["name"] == name and set(config) - {"name"} == set(loss_settings(name))
    settings = {k: v for k, v in config.items() if k != "name"}
    assert get_loss(name, **settings).get_config_dict() == config
    assert loss.summary in loss.describe()


@pytest.mark.parametrize("name", NAMES)
def test_order_of_the_negatives(name):
    scores, teacher = tensors("several_groups")
    permutation = torch.tensor([0, 3, 1, 4, 2])  # the positive stays first
    loss = get_loss(name)
    before = call(loss, scores, teacher).item()
    after = call(loss, scores[:, permutation], teacher[:, permutation]).item()
    if LOSSES[name].order_invariant:
        assert after == pytest.approx(before, rel=1e-6)
    else:  # ListMLE's tied negatives keep their drawn order: the definition itself depends on it
        assert after != pytest.approx(before, rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_raising_the_positive_from_below_every_negative_never_raises_the_loss(name):
    loss = get_loss(name)
    teacher = torch.tensor([[6.0, 1.0, 2.0, 3.0]])  # the teacher, too, prefers the positive
    values = [
        call(loss, torch.tensor([[p, 1.0, 2.0, 3.0]]), teacher).item() for p in torch.linspace(-4, 0.99, 40)
    ]
    assert all(b <= a + 1e-6 for a, b in zip(values, values[1:], strict=False)), values


@pytest.mark.parametrize("name", sorted(MONOTONE_EVERYWHERE))
def test_raising_the_positive_never_raises_the_loss_anywhere(name):
    loss = get_loss(name)
    values = [loss(torch.tensor([[p, 1.0, 2.0, 3.0]])).item() for p in torch.linspace(-6, 12, 200)]
    assert all(b <= a + 1e-6 for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize("name", NAMES)
def test_scores_of_plus_minus_1e4_give_finite_losses_and_gradients(name):
    scores = torch.tensor([[1e4, -1e4, 1e4, -1e4], [-1e4, 1e4, -1e4, 1e4]], requires_grad=True)
    teacher = torch.tensor([[1e4, -1e4, -1e4, 1e4], [1e4, -1e4, 1e4, -1e4]])
    loss = call(get_loss(name), scores, teacher)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_scores_are_computed_in_float32(name):
    scores, teacher = tensors("several_groups")
    loss = get_loss(name)
    low = call(loss, scores.bfloat16(), teacher.bfloat16())
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(
        call(loss, scores.bfloat16().float(), teacher.bfloat16().float()).item()
    )


@pytest.mark.parametrize("name", NAMES)
def test_shapes_are_checked(name):
    loss = get_loss(name)
    with pytest.raises(ValueError, match="expected scores of shape"):
        loss(torch.zeros(6), torch.zeros(6))
    with pytest.raises(ValueError, match="differ"):
        loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_the_objective_adds_the_weighted_distillation_term_and_returns_both_parts():
    scores, teacher = tensors("several_groups")
    ce = get_loss("grouped_cross_entropy")(scores)
    for name, settings in (("kl", {"temperature": 2.0}), ("margin_mse", {})):
        objective = build_objective(distill_loss=name, distill_weight=0.5, distill_temperature=settings.get(
            "temperature", 1.0))  # fmt: skip
        distill = get_loss(name, **settings)(scores, teacher)
        total, parts = objective(scores, teacher)
        assert total.item() == pytest.approx((ce + 0.5 * distill).item(), rel=1e-6)
        assert set(parts) == {"ranking", "distill"} and parts["distill"].item() == pytest.approx(
            distill.item()
        )
    total, parts = RankingObjective(get_loss("grouped_cross_entropy"))(scores)
    assert total.item() == pytest.approx(ce.item()) and parts == {}
    with pytest.raises(ValueError, match="needs teacher scores"):
        build_objective(distill_loss="kl")(scores, None)


def test_distillation_settings_are_checked():
    assert {"kl", "margin_mse"} <= set(distill_losses())  # every loss that requires a teacher
    with pytest.raises(
        ValueError, match=f"unknown distill_loss 'bce'; choose one of: {', '.join(distill_losses())}"
    ):
        build_objective(distill_loss="bce")
    with pytest.raises(ValueError, match="distill_weight must be >= 0"):
        build_objective(distill_loss="kl", distill_weight=-1.0)


def teacher_scored(records: list[dict]) -> list[dict]:
    """A teacher that knows the task: 5 for the positive, 0 to 1 for the negatives."""
    for record in records:
        record["pos_scores"] = [5.0 for _ in record["pos"]]
        record["neg_scores"] = [0.25 * (i % 4) for i in range(len(record["neg"]))]
    return records


def top1(trainer, groups) -> float:
    """Share of groups whose positive gets the highest score."""
    trainer.model.eval()
    batch = trainer.data_collator(groups)
    with torch.no_grad():
        scores = trainer.score(trainer.model, {k: v for k, v in batch.items() if torch.is_tensor(v)})
    return (scores.view(len(groups), -1).argmax(dim=1) == 0).float().mean().item()


@pytest.mark.parametrize("name", NAMES)
def test_each_loss_trains_the_learnable_toy_task(tmp_path, tiny_bert_dir, name):
    # 10 queries in batches of 4, 4 and 2: the short last batch trains too
    data = write_jsonl(tmp_path / "train.jsonl", teacher_scored(toy_records(10)))
    config = make_config(tmp_path, tiny_bert_dir, data, loss=name, num_train_epochs=12, learning_rate=5e-3)
    trainer = build(config)
    groups = [trainer.train_dataset[i] for i in range(10)]
    before = top1(trainer, groups)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 36 and all(map(torch.isfinite, torch.tensor(losses)))
    # every loss falls (listnet only to its floor, the entropy of softmax(labels): 1.27 of 1.39 at the start)
    assert sum(losses[-6:]) < 0.95 * sum(losses[:6]), losses
    # the random start ranks some positives first by chance (6 of 10 here); training ranks at least 9 first
    assert before < 0.9 <= top1(trainer, groups)

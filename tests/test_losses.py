"""The losses equal hand computations on given score tensors."""

from __future__ import annotations

import math

import pytest
import torch

from rerankforge.trainer.losses import GroupedCrossEntropyLoss, ListwiseDistillationLoss, RankingObjective

SCORES = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
TEACHER = torch.tensor([[4.0, 1.0, 0.0], [1.0, 2.0, 0.5]])


def softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(x / temperature) for x in row]
    return [e / sum(exps) for e in exps]


def test_grouped_cross_entropy_is_mean_negative_log_softmax_of_column_zero():
    expected = sum(-math.log(softmax(row)[0]) for row in SCORES.tolist()) / len(SCORES)
    assert GroupedCrossEntropyLoss()(SCORES).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_distillation_is_mean_kl_teacher_to_student(temperature):
    expected = 0.0
    for student_row, teacher_row in zip(SCORES.tolist(), TEACHER.tolist(), strict=True):
        p = softmax(teacher_row, temperature)
        q = softmax(student_row, temperature)
        expected += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
    expected /= len(SCORES)
    loss = ListwiseDistillationLoss(temperature)(SCORES, TEACHER)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_distillation_is_zero_when_student_equals_teacher():
    assert ListwiseDistillationLoss()(TEACHER, TEACHER).item() == pytest.approx(0.0, abs=1e-7)


def test_objective_adds_weighted_distillation_to_cross_entropy():
    ce = GroupedCrossEntropyLoss()(SCORES).item()
    kd = ListwiseDistillationLoss(2.0)(SCORES, TEACHER).item()
    objective = RankingObjective(distillation=True, distill_weight=0.5, temperature=2.0)
    assert objective(SCORES, TEACHER).item() == pytest.approx(ce + 0.5 * kd, rel=1e-6)
    assert RankingObjective()(SCORES).item() == pytest.approx(ce, rel=1e-6)
    with pytest.raises(ValueError, match="no teacher scores"):
        objective(SCORES, None)


def test_losses_reject_wrong_shapes():
    with pytest.raises(ValueError):
        GroupedCrossEntropyLoss()(torch.zeros(6))
    with pytest.raises(ValueError):
        ListwiseDistillationLoss()(SCORES, TEACHER[:, :2])
    with pytest.raises(ValueError):
        ListwiseDistillationLoss(0.0)

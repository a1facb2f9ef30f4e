"""kl: mean over groups of KL(softmax(teacher / T) || softmax(scores / T))."""

from __future__ import annotations

import math

import pytest
from loss_cases import CASES, mean, softmax, tensors

from rerankforge.trainer.losses import get_loss


def by_hand(scores, teacher, temperature: float) -> float:
    terms = []
    for s, t in zip(scores, teacher, strict=True):
        p, q = softmax(t, temperature), softmax(s, temperature)
        terms.append(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True)))
    return mean(terms)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("case", CASES)
def test_equals_the_definition(case, temperature):
    scores, teacher = tensors(case)
    expected = by_hand(*CASES[case], temperature)
    loss = get_loss("kl", temperature=temperature)(scores, teacher)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_a_student_equal_to_the_teacher_has_zero_loss():
    _, teacher = tensors("several_groups")
    assert get_loss("kl")(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        get_loss("kl", temperature=0.0)

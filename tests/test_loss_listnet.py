"""listnet: mean over groups of the cross-entropy between softmax(labels) and softmax(scores)."""

from __future__ import annotations

import math

import pytest
import torch
from loss_cases import CASES, binary_labels, mean, softmax, tensors

from rerankforge.trainer.losses import get_loss


def by_hand(scores, labels) -> float:
    terms = []
    for row, row_labels in zip(scores, labels, strict=True):
        target, predicted = softmax(row_labels), softmax(row)
        terms.append(-sum(t * math.log(p) for t, p in zip(target, predicted, strict=True)))
    return mean(terms)


@pytest.mark.parametrize("case", CASES)
def test_equals_the_definition_with_binary_labels(case):
    scores, _ = tensors(case)
    rows = CASES[case][0]
    expected = by_hand(rows, [binary_labels(r) for r in rows])
    assert get_loss("listnet")(scores).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_graded_labels_are_the_teachers_scores(case):
    scores, teacher = tensors(case)
    expected = by_hand(CASES[case][0], CASES[case][1])
    assert get_loss("listnet", graded=True)(scores, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_its_minimum_is_where_the_scores_softmax_equals_the_labels_softmax():
    scores = torch.tensor([[1.0, 0.0, 0.0, 0.0]], requires_grad=True)  # softmax(scores) = softmax(labels)
    loss = get_loss("listnet")(scores)
    loss.backward()
    assert loss.item() == pytest.approx(-sum(p * math.log(p) for p in softmax([1, 0, 0, 0])), rel=1e-6)
    assert scores.grad.abs().max().item() < 1e-6  # the positive's share e / (e + 3) = 0.48: no push beyond it

"""bce: mean over every pair of the binary cross-entropy of sigmoid(score), positives weighted by pos_weight."""

from __future__ import annotations

import math

import pytest
from loss_cases import CASES, binary_labels, mean, sigmoid, tensors

from rerankforge.trainer.losses import get_loss


def by_hand(scores: list[list[float]], pos_weight: float) -> float:
    terms = []
    for row in scores:
        for score, label in zip(row, binary_labels(row), strict=True):
            p = sigmoid(score)
            terms.append(-(pos_weight * label * math.log(p) + (1 - label) * math.log(1 - p)))
    return mean(terms)


@pytest.mark.parametrize("pos_weight", [1.0, 3.0])
@pytest.mark.parametrize("case", CASES)
def test_equals_the_definition(case, pos_weight):
    scores, _ = tensors(case)
    loss = get_loss("bce", pos_weight=pos_weight)(scores)
    assert loss.item() == pytest.approx(by_hand(CASES[case][0], pos_weight), rel=1e-5)


def test_pos_weight_must_be_positive():
    with pytest.raises(ValueError, match="pos_weight must be > 0"):
        get_loss("bce", pos_weight=0)

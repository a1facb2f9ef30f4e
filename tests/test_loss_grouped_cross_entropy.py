"""grouped_cross_entropy: mean over groups of -log softmax(scores)[positive]."""

from __future__ import annotations

import math

import pytest
from loss_cases import CASES, mean, softmax, tensors

from rerankforge.trainer.losses import get_loss


def by_hand(scores: list[list[float]]) -> float:
    return mean([-math.log(softmax(row)[0]) for row in scores])


@pytest.mark.parametrize("case", CASES)
def test_equals_the_definition(case):
    scores, _ = tensors(case)
    assert get_loss("grouped_cross_entropy")(scores).item() == pytest.approx(
        by_hand(CASES[case][0]), rel=1e-5
    )

"""ranknet: mean over ordered pairs (label i > label j) of log(1 + exp(-sigma (s_i - s_j)))."""

from __future__ import annotations

import math

import pytest
from loss_cases import CASES, binary_labels, mean, tensors

from rerankforge.trainer.losses import get_loss


def by_hand(scores, labels, sigma: float) -> float:
    terms = []
    for row, row_labels in zip(scores, labels, strict=True):
        for i in range(len(row)):
            for j in range(len(row)):
                if row_labels[i] > row_labels[j]:
                    terms.append(math.log(1 + math.exp(-sigma * (row[i] - row[j]))))
    return mean(terms)


@pytest.mark.parametrize("sigma", [1.0, 2.5])
@pytest.mark.parametrize("case", CASES)
def test_equals_the_definition_with_binary_labels(case, sigma):
    scores, _ = tensors(case)
    rows = CASES[case][0]
    expected = by_hand(rows, [binary_labels(r) for r in rows], sigma)
    assert get_loss("ranknet", sigma=sigma)(scores).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_graded_labels_are_the_teachers_scores(case):
    scores, teacher = tensors(case)
    expected = by_hand(CASES[case][0], CASES[case][1], 1.0)
    assert get_loss("ranknet", graded=True)(scores, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_a_batch_whose_teacher_ties_everything_has_no_pair_and_zero_loss():
    scores = tensors("ties")[0].requires_grad_()
    loss = get_loss("ranknet", graded=True)(scores, scores.detach() * 0)
    loss.backward()
    assert loss.item() == 0.0 and scores.grad is not None

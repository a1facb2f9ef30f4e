"""plistmle: ListMLE with position i's term weighted by 2^(G - i) - 1, the weights normalised to sum 1."""

from __future__ import annotations

import pytest
from loss_cases import CASES, mean, tensors
from test_loss_listmle import ordering, plackett_luce_terms

from rerankforge.trainer.losses import get_loss


def by_hand(scores, teacher=None) -> float:
    losses = []
    for b, row in enumerate(scores):
        size = len(row)
        weights = [2 ** (size - i) - 1 for i in range(size)]
        terms = plackett_luce_terms(row, ordering(teacher[b] if teacher else None, size))
        losses.append(sum(w * t for w, t in zip(weights, terms, strict=True)) / sum(weights))
    return mean(losses)


@pytest.mark.parametrize("case", CASES)
def test_equals_the_definition_with_binary_labels(case):
    scores, _ = tensors(case)
    assert get_loss("plistmle")(scores).item() == pytest.approx(by_hand(CASES[case][0]), rel=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_graded_labels_order_the_passages_by_the_teacher(case):
    scores, teacher = tensors(case)
    expected = by_hand(CASES[case][0], CASES[case][1])
    assert get_loss("plistmle", graded=True)(scores, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_with_two_passages_it_is_three_quarters_of_listmle():
    # weights 2^2 - 1 = 3 and 2^1 - 1 = 1, normalised; the last position's term is always 0
    scores, _ = tensors("one_positive_one_negative")
    assert get_loss("plistmle")(scores).item() == pytest.approx(
        0.75 * get_loss("listmle")(scores).item(), rel=1e-6
    )

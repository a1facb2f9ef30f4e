"""listmle: the negative Plackett-Luce log-likelihood of the labels' ordering (ties keep the group's order)."""

from __future__ import annotations

import math

import pytest
from loss_cases import CASES, mean, tensors

from rerankforge.trainer.losses import get_loss


def ordering(labels: list[float] | None, size: int) -> list[int]:
    """Binary labels: the group as it is (positive, then the negatives as drawn); graded: by label, stably."""
    if labels is None:
        return list(range(size))
    return sorted(range(size), key=lambda j: -labels[j])


def plackett_luce_terms(row: list[float], order: list[int]) -> list[float]:
    ranked = [row[j] for j in order]
    return [math.log(sum(math.exp(x) for x in ranked[i:])) - ranked[i] for i in range(len(ranked))]


def by_hand(scores, teacher=None) -> float:
    return mean([sum(plackett_luce_terms(row, ordering(teacher[b] if teacher else None, len(row))))
                 for b, row in enumerate(scores)])  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_equals_the_definition_with_binary_labels(case):
    scores, _ = tensors(case)
    assert get_loss("listmle")(scores).item() == pytest.approx(by_hand(CASES[case][0]), rel=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_graded_labels_order_the_passages_by_the_teacher(case):
    scores, teacher = tensors(case)
    expected = by_hand(CASES[case][0], CASES[case][1])
    assert get_loss("listmle", graded=True)(scores, teacher).item() == pytest.approx(expected, rel=1e-5)

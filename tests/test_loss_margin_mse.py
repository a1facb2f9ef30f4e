"""margin_mse: mean over groups and negatives of ((s_pos - s_neg) - (t_pos - t_neg))^2."""

from __future__ import annotations

import pytest
from loss_cases import CASES, mean, tensors

from rerankforge.trainer.losses import get_loss


def by_hand(scores, teacher) -> float:
    return mean([((s[0] - s[j]) - (t[0] - t[j])) ** 2 for s, t in zip(scores, teacher, strict=True)
                 for j in range(1, len(s))])  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_equals_the_definition(case):
    scores, teacher = tensors(case)
    expected = by_hand(*CASES[case])
    assert get_loss("margin_mse")(scores, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_only_margins_count_a_shifted_student_has_zero_loss():
    _, teacher = tensors("several_groups")
    assert get_loss("margin_mse")(teacher + 7.5, teacher).item() == pytest.approx(0.0, abs=1e-6)


def test_it_needs_teacher_scores():
    scores, _ = tensors("ties")
    with pytest.raises(ValueError, match="margin_mse needs teacher scores"):
        get_loss("margin_mse")(scores)

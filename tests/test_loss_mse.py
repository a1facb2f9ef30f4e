"""mse: mean over every pair of (s - t)^2."""

from __future__ import annotations

import pytest
from loss_cases import CASES, mean, tensors

from rerankforge.trainer.losses import get_loss


def by_hand(scores, teacher) -> float:
    return mean([(s - t) ** 2 for s_row, t_row in zip(scores, teacher, strict=True)
                 for s, t in zip(s_row, t_row, strict=True)])  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_equals_the_definition(case):
    scores, teacher = tensors(case)
    assert get_loss("mse")(scores, teacher).item() == pytest.approx(by_hand(*CASES[case]), rel=1e-5)


def test_unlike_margin_mse_a_shifted_student_is_penalised():
    _, teacher = tensors("several_groups")
    assert get_loss("mse")(teacher + 2.0, teacher).item() == pytest.approx(4.0, rel=1e-6)

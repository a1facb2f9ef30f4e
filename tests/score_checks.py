"""Score comparisons that a wrong scorer cannot pass: a tolerance relative to the scores' spread, and the order.

Why: the random tiny models once scored every pair within 2e-4 of every other, so a comparison at 1e-4 passed a
backend that returned one constant, or the right scores in the wrong order. These checks first require the
expected scores to spread (`MIN_SPREAD`), then compare at a fraction of that spread, then compare the ranking.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_SPREAD = 0.05  # the expected scores' range must be at least this for a comparison to mean anything
EXACT = 1e-4  # fp32 backends: at most this fraction of the range apart


def spread(scores: Sequence[float]) -> float:
    return float(max(scores) - min(scores))


def ranks(scores: Sequence[float]) -> np.ndarray:
    return np.argsort(np.argsort(np.asarray(scores, dtype=np.float64), kind="stable"), kind="stable")


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Rank correlation (no ties expected: the fixtures' scores are distinct)."""
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def assert_same_scores(actual: Sequence[float], expected: Sequence[float], rel: float = EXACT) -> None:
    """``actual`` equals ``expected`` within ``rel`` of the expected range, and ranks every clearly separated
    pair of rows (expected more than twice the tolerance apart) the same way."""
    actual, expected = [float(x) for x in actual], [float(x) for x in expected]
    assert len(actual) == len(expected), (len(actual), len(expected))
    width = spread(expected)
    assert width >= MIN_SPREAD, f"the expected scores span only {width:.2e}: this comparison cannot fail"
    tolerance = rel * width
    worst = max(abs(a - b) for a, b in zip(actual, expected, strict=True))
    assert worst <= tolerance, (
        f"scores differ by up to {worst:.3e} (tolerance {tolerance:.3e} = {rel} x range)"
    )
    for i, (a_i, e_i) in enumerate(zip(actual, expected, strict=True)):
        for j, (a_j, e_j) in enumerate(zip(actual, expected, strict=True)):
            if e_i - e_j > 2 * tolerance:
                assert a_i > a_j, f"rows {i} and {j} are ranked the other way round"


def assert_close_ranking(
    actual: Sequence[float], expected: Sequence[float], max_abs: float, min_spearman: float = 0.9
) -> None:
    """For approximate backends (int8, bf16): every score within ``max_abs``, which must be well below the
    expected range, and the ranking kept (Spearman correlation at least ``min_spearman``)."""
    width = spread(expected)
    assert width >= MIN_SPREAD and max_abs <= 0.25 * width, (width, max_abs)
    worst = max(abs(float(a) - float(b)) for a, b in zip(actual, expected, strict=True))
    assert worst <= max_abs, f"scores differ by up to {worst:.3e} (allowed {max_abs:.3e})"
    correlation = spearman(actual, expected)
    assert correlation >= min_spearman, f"rank correlation {correlation:.3f} < {min_spearman}"

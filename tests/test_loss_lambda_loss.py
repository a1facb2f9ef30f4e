"""lambda_loss: LambdaLoss (Wang et al., CIKM 2018) with its NDCG-Loss2++, NDCG-Loss2, LambdaRank and no weights."""

from __future__ import annotations

import math

import pytest
import torch
from loss_cases import CASES, binary_labels, mean, sigmoid, tensors

from rerankforge.trainer.losses import get_loss


def discount(position: int) -> float:  # D(i) = log2(1 + i), positions from 1
    return math.log2(1 + position)


def by_hand(
    scores, labels, weighting: str, k: int | None = None, sigma: float = 1.0, mu: float = 10.0
) -> float:
    terms = []
    for row, row_labels in zip(scores, labels, strict=True):
        size = len(row)
        top = min(k or size, size)
        order = sorted(range(size), key=lambda j: -row[j])  # by score, ties keep the group's order
        ideal = sorted(row_labels, reverse=True)
        max_dcg = sum((2 ** ideal[i] - 1) / discount(i + 1) for i in range(top))
        gain = {j: (2 ** row_labels[j] - 1) / max(max_dcg, 1e-10) for j in range(size)}
        position = {j: order.index(j) + 1 for j in range(size)}
        for a in range(size):
            for b in range(size):
                if not (row_labels[a] > row_labels[b] and position[a] <= top and position[b] <= top):
                    continue
                i, j = position[a], position[b]
                gap = abs(gain[a] - gain[b])
                delta = abs(1 / discount(abs(i - j)) - 1 / discount(abs(i - j) + 1))
                lambdarank = abs(1 / discount(i) - 1 / discount(j)) * gap
                weight = {
                    "none": 1.0,
                    "lambdarank": lambdarank,
                    "ndcg_loss2": delta * gap,
                    "ndcg_loss2pp": mu * delta * gap + lambdarank,
                }[weighting]
                terms.append(-weight * math.log2(sigmoid(sigma * (row[a] - row[b]))))
    return mean(terms)


WEIGHTINGS = ["ndcg_loss2pp", "ndcg_loss2", "lambdarank", "none"]


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("case", CASES)
def test_equals_the_papers_definition_with_binary_labels(case, weighting):
    scores, _ = tensors(case)
    rows = CASES[case][0]
    expected = by_hand(rows, [binary_labels(r) for r in rows], weighting)
    loss = get_loss("lambda_loss", weighting=weighting)(scores)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("settings", [{"k": 3}, {"sigma": 2.0}, {"mu": 3.0}, {"k": 1}])
def test_k_sigma_and_mu(settings):
    scores, _ = tensors("group_of_16")
    rows = CASES["group_of_16"][0]
    expected = by_hand(rows, [binary_labels(r) for r in rows], "ndcg_loss2pp", **settings)
    assert get_loss("lambda_loss", **settings)(scores).item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("case", CASES)
def test_graded_labels_are_the_teachers_scores_scaled_to_0_1_in_each_group(case):
    scores, teacher = tensors(case)
    scaled = []
    for row in CASES[case][1]:
        low, high = min(row), max(row)
        scaled.append([(x - low) / (high - low) if high > low else 0.0 for x in row])
    expected = by_hand(CASES[case][0], scaled, "ndcg_loss2pp")
    loss = get_loss("lambda_loss", graded=True)(scores, teacher)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_no_weighting_is_ranknet_in_base_2():
    scores, _ = tensors("several_groups")
    ranknet = get_loss("ranknet")(scores).item() / math.log(2)
    assert get_loss("lambda_loss", weighting="none")(scores).item() == pytest.approx(ranknet, rel=1e-6)


def test_the_weights_change_when_the_positive_overtakes_a_negative():
    # as the paper defines them, the weights follow the current ranking and carry no gradient: when the positive
    # passes the middle negative, its pair with the top negative moves from distance 2 to distance 1, whose
    # NDCG-Loss2 weight is larger, so the loss jumps up even though the positive only improved
    loss = get_loss("lambda_loss")
    below = loss(torch.tensor([[0.99, 8.0, 1.0]])).item()
    above = loss(torch.tensor([[1.01, 8.0, 1.0]])).item()
    assert above > below
    unweighted = get_loss("lambda_loss", weighting="none")  # RankNet: no weights, no jump
    assert (
        unweighted(torch.tensor([[1.01, 8.0, 1.0]])).item()
        < unweighted(torch.tensor([[0.99, 8.0, 1.0]])).item()
    )


def test_bad_settings_are_refused_with_the_choices():
    with pytest.raises(
        ValueError, match="weighting must be one of ndcg_loss2pp, ndcg_loss2, lambdarank, none"
    ):
        get_loss("lambda_loss", weighting="ndcg3")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        get_loss("lambda_loss", k=0)

"""Small score tensors every loss test runs on, and plain-Python helpers for the hand computations.

Each loss's own test (``test_loss_<name>.py``) writes the loss's published definition with loops over these
lists and compares it with the module.
"""

from __future__ import annotations

import math
import random

import torch


def _random_rows(groups: int, size: int, seed: int) -> list[list[float]]:
    rng = random.Random(seed)
    return [[round(rng.uniform(-3, 3), 3) for _ in range(size)] for _ in range(groups)]


# name -> (student scores, teacher scores); column 0 is each group's positive
CASES: dict[str, tuple[list[list[float]], list[list[float]]]] = {
    "ties": ([[1.0, 1.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]], [[3.0, 1.0, 1.0, 0.0], [2.0, 2.0, 1.0, 1.0]]),
    "one_positive_one_negative": ([[0.3, -0.2]], [[2.0, 0.5]]),
    "group_of_16": (_random_rows(2, 16, seed=1), _random_rows(2, 16, seed=2)),
    "batch_of_one_group": ([[2.0, 0.5, -1.0, 0.7]], [[4.0, 1.0, 0.0, 2.0]]),
    "several_groups": (_random_rows(3, 5, seed=3), _random_rows(3, 5, seed=4)),
}


def tensors(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    scores, teacher = CASES[case]
    return torch.tensor(scores), torch.tensor(teacher)


def binary_labels(row: list[float]) -> list[float]:
    return [1.0] + [0.0] * (len(row) - 1)


def softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    top = max(row)
    exps = [math.exp((x - top) / temperature) for x in row]
    return [e / sum(exps) for e in exps]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0

"""The NaN guard's fp16 loss-scaler path (trainer/nan_guard.py), driven directly: an infinite gradient norm
under a finite loss is the scaler's own overflow step, counted as a skip under both policies, and only
SCALER_OVERFLOWS_IN_A_ROW of them in a row (the scale collapsing) stop the run."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from rerankforge.trainer.base_trainer import RerankerTrainer
from rerankforge.trainer.nan_guard import (
    SCALER_OVERFLOWS_IN_A_ROW,
    NanGuard,
    NonFiniteTrainingError,
    RunFacts,
)

INF = float("inf")


def make_guard(
    policy: str = "stop", max_consecutive_skips: int = 8, uses_loss_scaler: bool = True
) -> NanGuard:
    facts = RunFacts(learning_rate=1e-4, max_grad_norm=1.0, fp16=True, bf16=False, total_steps=lambda: 1000,
                     newest_checkpoint=lambda: None)  # fmt: skip
    return NanGuard(policy, max_consecutive_skips, facts, uses_loss_scaler=uses_loss_scaler)


def step(guard: NanGuard, number: int, norm: float, loss: float = 0.7) -> int:
    """One optimizer step of one micro-batch, the norm a device tensor as the Trainer gives it; returns how
    many times the guard dropped the gradients."""
    dropped = []
    guard.after_micro_batch(torch.tensor(loss), number)
    guard.after_gradients(torch.tensor(norm), number, lambda: dropped.append(number))
    return len(dropped)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_an_overflow_under_a_finite_loss_counts_as_a_skip_and_leaves_the_update_to_the_scaler(policy, caplog):
    guard = make_guard(policy)
    with caplog.at_level(logging.WARNING, logger="rerankforge.trainer.nan_guard"):
        assert step(guard, 1, 0.5) == 0
        assert step(guard, 2, INF) == 0  # not dropped here: the scaler skips the optimizer step itself
    guard.raise_if_pending()  # read at once, nothing left on the device to stop the run later
    assert (guard.skipped_steps, guard.consecutive_skips) == (1, 1)
    assert (
        "step 2: fp16 overflow (loss 0.7, gradient norm inf): update skipped (1 in a row, 1 in all)"
        in caplog.text
    )
    assert step(guard, 3, 0.5) == 0
    assert (guard.skipped_steps, guard.consecutive_skips) == (1, 0)  # a finite step ends the run of overflows


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_the_24th_overflow_in_a_row_stops_the_run_and_a_finite_step_resets_the_count(policy):
    guard = make_guard(policy, max_consecutive_skips=3)  # the scaler's limit is the larger of the two
    for number in range(1, SCALER_OVERFLOWS_IN_A_ROW):  # 23 in a row: the scale is still halving
        step(guard, number, INF)
    step(guard, SCALER_OVERFLOWS_IN_A_ROW, 0.5)
    assert (guard.skipped_steps, guard.consecutive_skips) == (23, 0)
    first = SCALER_OVERFLOWS_IN_A_ROW + 1
    for number in range(first, first + SCALER_OVERFLOWS_IN_A_ROW - 1):
        step(guard, number, INF)
    last = first + SCALER_OVERFLOWS_IN_A_ROW - 1
    with pytest.raises(
        NonFiniteTrainingError, match=f"24 steps in a row .* the last, step {last}, had loss 0.7"
    ):
        step(guard, last, INF)
    assert guard.skipped_steps == 47


def test_a_higher_nan_max_consecutive_skips_raises_the_scalers_limit_too():
    guard = make_guard("skip", max_consecutive_skips=30)
    for number in range(1, 30):
        step(guard, number, INF)
    with pytest.raises(NonFiniteTrainingError, match="30 steps in a row"):
        step(guard, 30, INF)


def test_a_non_finite_loss_is_no_overflow_even_with_a_scaler():
    stop = make_guard("stop")
    with pytest.raises(NonFiniteTrainingError, match="step 4 has loss nan"):
        step(stop, 4, INF, loss=float("nan"))  # stops at once, as without a scaler
    skip = make_guard("skip", max_consecutive_skips=2)
    assert step(skip, 1, INF, loss=float("nan")) == 1  # a real skip: the guard drops the gradients
    with pytest.raises(NonFiniteTrainingError, match="2 steps in a row"):  # the plain limit, not 24
        step(skip, 2, INF, loss=float("nan"))


def test_without_a_scaler_an_infinite_norm_stops_the_run():
    guard = make_guard("stop", uses_loss_scaler=False)
    step(guard, 5, INF)  # recorded on the device, read at the next sync
    with pytest.raises(NonFiniteTrainingError, match="step 5 has loss 0.7 and gradient norm inf"):
        guard.raise_if_pending()


@pytest.mark.parametrize(
    ("scaler", "deepspeed", "fp16", "expected"),
    [
        (None, False, False, False),
        (object(), False, True, True),
        (None, True, True, True),
        (None, True, False, False),
    ],
)
def test_the_trainer_tells_the_guard_when_a_loss_scaler_is_in_use(scaler, deepspeed, fp16, expected):
    """Native AMP's GradScaler (the accelerator's), or DeepSpeed with fp16 (the engine's own scaler)."""
    args = SimpleNamespace(learning_rate=1e-4, max_grad_norm=1.0, fp16=fp16, bf16=False, output_dir="unused",
                           nan_policy="stop", nan_max_consecutive_skips=8)  # fmt: skip
    trainer = SimpleNamespace(
        args=args, accelerator=SimpleNamespace(scaler=scaler), is_deepspeed_enabled=deepspeed
    )
    assert RerankerTrainer._build_nan_guard(trainer).uses_loss_scaler is expected

"""Warm-up + cosine learning rates, and the best-epoch / early-stopping decisions of the FOMO trainers."""

from __future__ import annotations

import pytest
import torch

from nnunet_ext.trainers.model_selection import best_epoch, epochs_since_best, patience_exhausted
from nnunet_ext.trainers.schedules import (
    MAX_WARMUP_FRACTION,
    WARMUP_EPOCHS,
    WarmupCosineLRScheduler,
    warmup_cosine_factor,
    warmup_epochs_for,
)

NAN = float("nan")


def _optimizer(*lrs: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs])


def test_warmup_rises_linearly_then_cosine_decays_to_about_zero():
    factors = [warmup_cosine_factor(epoch, 4, 20) for epoch in range(20)]
    assert factors[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert factors[4:] == sorted(factors[4:], reverse=True)
    assert factors[12] == pytest.approx(0.5)  # half-way through the cosine part
    assert 0 < factors[-1] < 0.01


def test_warmup_shrinks_for_short_runs():
    assert warmup_epochs_for(1000) == WARMUP_EPOCHS
    assert warmup_epochs_for(50) == int(50 * MAX_WARMUP_FRACTION)
    assert warmup_epochs_for(2) == 0
    assert warmup_cosine_factor(0, warmup_epochs_for(2), 2) == 1.0


def test_warmup_longer_than_the_run_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        WarmupCosineLRScheduler(_optimizer(1e-4), warmup_epochs=5, num_epochs=5)


def test_scheduler_follows_the_epoch_nnunet_passes_and_keeps_group_ratios():
    optimizer = _optimizer(1e-4, 1e-5)
    scheduler = WarmupCosineLRScheduler(optimizer, warmup_epochs=2, num_epochs=10)
    scheduler.step(7)  # what a run resumed at epoch 7 (--c) does first
    expected = warmup_cosine_factor(7, 2, 10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4 * expected, 1e-5 * expected])
    assert scheduler.get_last_lr() == [g["lr"] for g in optimizer.param_groups]


def test_stepping_without_an_epoch_advances_by_one():
    optimizer = _optimizer(1.0)
    scheduler = WarmupCosineLRScheduler(optimizer, warmup_epochs=4, num_epochs=10)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)  # epoch 0, set at construction
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)


@pytest.mark.parametrize("history, higher, expected", [
    ([0.1, 0.3, 0.2], True, 1),
    ([0.1, 0.3, 0.3], True, 1),  # a tie does not move the best epoch
    ([5.0, 3.0, 4.0], False, 1),  # lower is better (MAE)
    ([NAN, 0.2, NAN, 0.1], True, 1),  # any number beats a NaN, a NaN beats nothing
    ([NAN, NAN], True, 0),  # epoch 0 is the best until beaten, as in nnU-Net
])
def test_best_epoch(history, higher, expected):
    assert best_epoch(history, higher) == expected


def test_best_epoch_needs_a_history():
    with pytest.raises(ValueError):
        best_epoch([], True)


def test_patience_counts_epochs_after_the_best():
    history = [0.5, 0.7, 0.6, 0.65]
    assert epochs_since_best(history, True) == 2
    assert not patience_exhausted(history, True, 3)
    assert patience_exhausted(history, True, 2)
    assert not patience_exhausted(history, True, None)
    assert not patience_exhausted([], True, 1)


class _RecordingLogger:
    def __init__(self):
        self.plotted: list[str] = []

    def plot_progress_png(self, output_folder: str) -> None:
        self.plotted.append(output_folder)


def test_progress_plot_is_suppressed_only_inside_the_block():
    from nnunet_ext.trainers.base import progress_plot_suppressed

    logger = _RecordingLogger()
    with progress_plot_suppressed(logger):
        logger.plot_progress_png("inside")
    logger.plot_progress_png("after")
    assert logger.plotted == ["after"]
    with pytest.raises(RuntimeError), progress_plot_suppressed(logger):
        raise RuntimeError("an epoch that fails still restores the logger")
    logger.plot_progress_png("after failure")
    assert logger.plotted == ["after", "after failure"]

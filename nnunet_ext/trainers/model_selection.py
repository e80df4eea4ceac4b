"""Best-epoch and early-stopping decisions, computed from the per-epoch history of the selection metric.

The history lives in nnU-Net's logger, which nnU-Net saves in every checkpoint and restores on ``--c``; deciding
from it (instead of from counters of our own) keeps a resumed run's decisions identical to an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: Epochs without a new best validation metric after which training stops (full-length runs).
EARLY_STOPPING_PATIENCE = 50


def _is_better(candidate: float, incumbent: float, higher_is_better: bool) -> bool:
    """A NaN (e.g. a pseudo-Dice with no foreground anywhere) never improves, but any number beats a NaN."""
    if math.isnan(candidate):
        return False
    if math.isnan(incumbent):
        return True
    return candidate > incumbent if higher_is_better else candidate < incumbent


def best_epoch(history: Sequence[float], higher_is_better: bool) -> int:
    """Index of the best value; ties keep the earlier epoch. Epoch 0 is the best until beaten, as in nnU-Net."""
    if not history:
        raise ValueError("no epoch has been validated yet")
    best = 0
    for epoch in range(1, len(history)):
        if _is_better(float(history[epoch]), float(history[best]), higher_is_better):
            best = epoch
    return best


def epochs_since_best(history: Sequence[float], higher_is_better: bool) -> int:
    """Epochs validated after the best one; 0 means the latest epoch is the new best."""
    return len(history) - 1 - best_epoch(history, higher_is_better)


def patience_exhausted(history: Sequence[float], higher_is_better: bool, patience: int | None) -> bool:
    """True when ``patience`` epochs passed without improvement; ``None`` disables early stopping."""
    return patience is not None and bool(history) and epochs_since_best(history, higher_is_better) >= patience

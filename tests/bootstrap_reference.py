"""An independent percentile bootstrap to check ``nnunet_ext.metrics.bootstrap`` against: the same resamples,
rebuilt from the seed, scored by scikit-learn / NumPy and summarised by ``np.percentile``."""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.metrics import accuracy_score, recall_score, roc_auc_score


def resampled_cases(n_cases: int, n_resamples: int, seed: int) -> list[np.ndarray]:
    """The case indices of every resample as documented: ``default_rng(seed)``, one ``integers(0, n, n)`` each."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_cases, size=n_cases) for _ in range(n_resamples)]


def resampled_values(statistic: Callable[..., float], arrays: tuple, n_resamples: int, seed: int) -> np.ndarray:
    """``statistic`` on every resample (NaN where undefined)."""
    arrays = tuple(np.asarray(a) for a in arrays)
    return np.array([statistic(*(a[cases] for a in arrays))
                     for cases in resampled_cases(len(arrays[0]), n_resamples, seed)])


def percentiles(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The percentile interval of resampled ``values``, NaN (undefined) ones left out."""
    low, high = np.percentile(values[~np.isnan(values)], [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(low), float(high)


def percentile_interval(statistic: Callable[..., float], *arrays, n_resamples: int, seed: int,
                        confidence: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of ``statistic``."""
    return percentiles(resampled_values(statistic, arrays, n_resamples, seed), confidence)


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    return roc_auc_score(y, p) if np.unique(y).size == 2 else float("nan")


def sklearn_classification(threshold: float) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    """AUROC, accuracy, sensitivity and specificity by scikit-learn (positive: ``p >= threshold``)."""
    return {
        "auroc": auroc,
        "accuracy": lambda y, p: accuracy_score(y, p >= threshold),
        "sensitivity": lambda y, p: recall_score(y, p >= threshold, zero_division=np.nan),
        "specificity": lambda y, p: recall_score(1 - y, p < threshold, zero_division=np.nan),
    }

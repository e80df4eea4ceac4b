"""Regression metrics for predicted against true values (Task 3: brain age in years).

Computed with NumPy to the definitions of :mod:`sklearn.metrics` and :mod:`scipy.stats` (the tests check them
against those): the bootstrap calls :func:`regression_metrics` once per resample, and the libraries' input
validation would cost more than the arithmetic.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata

from nnunet_ext.metrics._common import paired_vectors, undefined

#: Keys of :func:`regression_metrics` that are performance metrics (and get confidence intervals).
REGRESSION_METRICS = ("mae", "rmse", "r2", "pearson_r", "spearman_rho", "mean_error")


def _constant_input(y_true: np.ndarray, y_pred: np.ndarray) -> str | None:
    """Name the constant input (a correlation is then 0 / 0), or return None if both vary."""
    for values, name in ((y_true, "y_true"), (y_pred, "y_pred")):
        if np.ptp(values) == 0:
            return f"{name} is constant"
    return None


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's correlation of two non-constant vectors."""
    dx, dy = x - x.mean(), y - y.mean()
    # clipped: rounding can carry |r| of perfectly (anti-)correlated inputs a hair past 1
    return float(np.clip(np.dot(dx, dy) / np.sqrt(np.dot(dx, dx) * np.dot(dy, dy)), -1.0, 1.0))


def regression_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float | int]:
    """All regression metrics of one set of predictions, in the units of the target.

    - mae: mean absolute error, mean(|pred - true|)
    - rmse: root mean squared error, sqrt(mean((pred - true)^2))
    - r2: coefficient of determination, 1 - SS_res / SS_tot (as :func:`sklearn.metrics.r2_score`);
      can be negative; undefined when ``y_true`` is constant (SS_tot = 0)
    - pearson_r: Pearson's linear correlation; undefined when either input is constant
    - spearman_rho: Spearman's rank correlation, Pearson's of the ranks (ties: mean rank, as
      :func:`scipy.stats.spearmanr`); undefined when either input is constant
    - mean_error: bias, mean(pred - true); positive means over-estimation (an older predicted age)

    Undefined metrics are NaN, with the reason given as an
    :class:`~sklearn.exceptions.UndefinedMetricWarning`.

    Parameters
    ----------
    y_true : array-like of shape (n_cases,)
        True values (ages in years for Task 3).
    y_pred : array-like of shape (n_cases,)
        Predicted values, same units.

    Returns
    -------
    dict
        The metrics of :data:`REGRESSION_METRICS` (floats; mae, rmse and mean_error in the target's
        units, the others unitless) and ``n``, the number of cases.
    """
    truth, pred = paired_vectors(y_true, y_pred, ("y_true", "y_pred"))
    constant = _constant_input(truth, pred)
    error = pred - truth
    squared_error = float(np.dot(error, error))
    total_variation = float(np.sum((truth - truth.mean()) ** 2))
    return {
        "n": truth.size,
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(squared_error / truth.size)),
        # sklearn would report 1.0 or 0.0 for a constant y_true; the ratio is 0 / 0, hence NaN.
        "r2": 1 - squared_error / total_variation if np.ptp(truth) > 0 else undefined("r2", "y_true is constant"),
        "pearson_r": _pearson(truth, pred) if constant is None else undefined("pearson_r", constant),
        "spearman_rho": (
            _pearson(rankdata(truth), rankdata(pred)) if constant is None else undefined("spearman_rho", constant)
        ),
        "mean_error": float(np.mean(error)),
    }

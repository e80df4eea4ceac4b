"""Calibration of case-level predictions: reliability bins and expected calibration error (ECE) of probabilities,
temperature scaling, and the bias of predicted ages against the true age.

Pure functions of arrays. The fitting of a calibration from out-of-fold predictions lives in
``nnunet_ext.evaluation.calibration``, its application to new predictions in ``nnunet_ext.inference.calibration``.

Probabilities are those of the positive class (binary classification, Task 1). Reliability bins split [0, 1]
into equal-width bins closed on the right, the first one also holding 0: the convention of
:func:`sklearn.calibration.calibration_curve` (``strategy="uniform"``), so that the two agree bin for bin.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import expit

from nnunet_ext.metrics._common import paired_vectors, undefined
from nnunet_ext.metrics.classification import _binary_inputs

#: Bins of the reliability diagram and the ECE: ten of width 0.1, the usual choice (Guo et al. 2017 use 15 with
#: thousands of cases; the FOMO test sets hold tens to hundreds).
DEFAULT_N_BINS = 10
#: The case-level trainers compute probabilities in float32, which rounds every probability within this distance of
#: 0 or 1 to 0 or 1 itself; probabilities are clipped to [r, 1 - r] before their logit is taken, so a rounded 1.0
#: gives the largest logit float32 can tell apart (about 16.6) instead of infinity.
PROBABILITY_RESOLUTION = float(np.finfo(np.float32).epsneg)


def probability_logit(y_prob: ArrayLike) -> np.ndarray:
    """Log-odds ``log(p / (1 - p))`` of probabilities, clipped to :data:`PROBABILITY_RESOLUTION` from 0 and 1.

    For a two-class softmax this is the difference of the two logits, which temperature scaling divides.

    Parameters
    ----------
    y_prob : array-like of shape (n_cases,)
        Probabilities of the positive class, in [0, 1].

    Returns
    -------
    ndarray of shape (n_cases,)
        Finite log-odds.
    """
    p = np.clip(np.asarray(y_prob, dtype=float), PROBABILITY_RESOLUTION, 1.0 - PROBABILITY_RESOLUTION)
    return np.log(p) - np.log1p(-p)


def temperature_scaled(y_prob: ArrayLike, temperature: float) -> np.ndarray:
    """Probabilities after temperature scaling: ``sigmoid(logit(p) / T)``, i.e. ``softmax(logits / T)``.

    ``T > 1`` moves probabilities towards 0.5 (less confident), ``T < 1`` away from it; their order, and so the
    AUROC, is unchanged.

    Parameters
    ----------
    y_prob : array-like of shape (n_cases,)
        Probabilities of the positive class, in [0, 1].
    temperature : float
        The temperature ``T > 0``.

    Returns
    -------
    ndarray of shape (n_cases,)
        Scaled probabilities.
    """
    if not temperature > 0:
        raise ValueError(f"the temperature must be positive, got {temperature}")
    return expit(probability_logit(y_prob) / temperature)


def reliability_bins(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = DEFAULT_N_BINS) -> dict[str, np.ndarray]:
    """Per-bin mean predicted probability and observed frequency of the positive class: the reliability diagram.

    Parameters
    ----------
    y_true : array-like of shape (n_cases,)
        Reference labels, 0 or 1.
    y_prob : array-like of shape (n_cases,)
        Predicted probability of the positive class, in [0, 1].
    n_bins : int, default=10
        Number of equal-width bins on [0, 1] (right-closed; the first also holds 0).

    Returns
    -------
    dict
        ``edges`` (n_bins + 1,), and per bin (n_bins,): ``count`` (int), ``mean_probability`` and
        ``observed_frequency`` (NaN in an empty bin). Over the non-empty bins, ``observed_frequency`` and
        ``mean_probability`` equal :func:`sklearn.calibration.calibration_curve`'s ``prob_true`` and ``prob_pred``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    labels, probs = _binary_inputs(y_true, y_prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted (side "left") on the inner edges puts p == edge into the lower bin: bins are (lo, hi]
    bins = np.searchsorted(edges[1:-1], probs)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins: 0 / 0 = NaN, as documented
        mean_probability = np.bincount(bins, weights=probs, minlength=n_bins) / count
        observed_frequency = np.bincount(bins, weights=labels, minlength=n_bins) / count
    return {"edges": edges, "count": count, "mean_probability": mean_probability,
            "observed_frequency": observed_frequency}


def expected_calibration_error(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = DEFAULT_N_BINS) -> float:
    """Expected calibration error of positive-class probabilities.

    ``ECE = sum_b (n_b / n) * |observed_frequency_b - mean_probability_b|`` over the non-empty bins of
    :func:`reliability_bins`: the mean distance, weighted by cases, between the reliability diagram and its
    diagonal. 0 for perfectly calibrated probabilities; at most 1.

    Parameters
    ----------
    y_true : array-like of shape (n_cases,)
        Reference labels, 0 or 1.
    y_prob : array-like of shape (n_cases,)
        Predicted probability of the positive class, in [0, 1].
    n_bins : int, default=10
        Number of equal-width bins.

    Returns
    -------
    float
        The ECE, in probability units.
    """
    bins = reliability_bins(y_true, y_prob, n_bins)
    filled = bins["count"] > 0
    gaps = np.abs(bins["observed_frequency"][filled] - bins["mean_probability"][filled])
    return float(np.sum(bins["count"][filled] * gaps) / np.sum(bins["count"]))


def age_bias(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """How the error of predicted ages depends on the true age (regression to the mean).

    The error ``pred - true`` is regressed on the true age by least squares: ``error ~ slope * true + intercept``.
    A model that regresses to the mean over-estimates the young and under-estimates the old: a negative slope
    (``slope = -1`` for a constant prediction; 0 when the error does not depend on age).

    Parameters
    ----------
    y_true : array-like of shape (n_cases,)
        True ages (years).
    y_pred : array-like of shape (n_cases,)
        Predicted ages (years).

    Returns
    -------
    dict
        ``slope`` (years of error per year of age), ``intercept`` (years), ``pearson_r`` (correlation of error and
        true age) and ``mean_error`` (years); slope, intercept and r are NaN, with an
        :class:`~sklearn.exceptions.UndefinedMetricWarning`, when the true ages are all equal (r also when the
        error is the same for every case).
    """
    truth, pred = paired_vectors(y_true, y_pred, ("y_true", "y_pred"))
    error = pred - truth
    mean_error = float(error.mean())
    if np.ptp(truth) == 0:
        reason = "the true ages are all equal"
        return {"slope": undefined("age bias slope", reason), "intercept": undefined("age bias intercept", reason),
                "pearson_r": undefined("age bias pearson_r", reason), "mean_error": mean_error}
    dt, de = truth - truth.mean(), error - error.mean()
    slope = float(np.dot(dt, de) / np.dot(dt, dt))
    spread = np.sqrt(np.dot(dt, dt) * np.dot(de, de))
    pearson_r = (float(np.clip(np.dot(dt, de) / spread, -1.0, 1.0)) if spread > 0
                 else undefined("age bias pearson_r", "the error is the same for every case"))
    return {"slope": slope, "intercept": float(error.mean() - slope * truth.mean()), "pearson_r": pearson_r,
            "mean_error": mean_error}

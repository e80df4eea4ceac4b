"""Fitting a case-level model's calibration on its out-of-fold validation predictions (never on a test set).

``fomo_find_best_configuration`` calls :func:`fit_calibration` with the pooled ``fold_X/validation/predictions.json``
of each candidate model (each case predicted by the one fold that did not train on it) and writes the result to the
model folder's ``calibration.json`` (read and applied by ``nnunet_ext.inference.calibration``):

- classification: temperature scaling (Guo et al. 2017): the one temperature ``T`` that minimises the negative
  log-likelihood of the out-of-fold labels under ``sigmoid(logit(p) / T)``; the AUROC does not change;
- regression (brain age): a linear de-bias ``age -> slope * age + intercept``, by default the least-squares fit of the
  true age on the predicted one (``true ~ a * pred + b``), which minimises the squared error of the corrected
  predictions on the out-of-fold cases and shrinks towards the mean where the model is noisy; or (``cole``) the
  correction of de Lange & Cole (2020): fit ``pred ~ alpha * true + beta`` and invert it, ``(pred - beta) / alpha``,
  which removes the dependence of the error on the true age on those cases (what brain-age-gap studies want) at the
  price of a larger error variance (it divides by ``alpha < 1``). Beheshti et al.'s (2019) variant subtracts
  ``alpha * true + beta`` and needs the true age at prediction time, so it cannot serve a challenge and is not offered.

When the fit has no solution (one class only, out-of-fold probabilities that separate the classes perfectly or
rank them worse than chance, constant predictions, predicted ages that do not grow with age), the stored calibration
is ``none`` with the reason, and a warning says so.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import brentq
from scipy.special import expit
from sklearn.exceptions import UndefinedMetricWarning

from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION
from nnunet_ext.inference.calibration import (
    CALIBRATION_JSON,
    METHOD_TASK,
    NO_CALIBRATION,
    TEMPERATURE,
    Calibration,
)
from nnunet_ext.evaluation.report import json_safe
from nnunet_ext.metrics._common import paired_vectors
from nnunet_ext.metrics.calibration import age_bias, expected_calibration_error, probability_logit
from nnunet_ext.metrics.classification import _binary_inputs
from nnunet_ext.utils.files import atomic_write_json

log = logging.getLogger(__name__)

#: The fits of the linear age de-bias (see the module docstring).
LEAST_SQUARES, COLE = "least_squares", "cole"
AGE_FITS = (LEAST_SQUARES, COLE)
#: Tolerance on the inverse temperature 1/T at which the NLL's derivative is taken as zero.
INVERSE_TEMPERATURE_TOLERANCE = 1e-10
#: Where the search for a bracket of the NLL's minimum starts (T = 1: the probabilities as they are).
INITIAL_INVERSE_TEMPERATURE = 1.0
#: What the record says the calibration was fitted on.
FITTED_ON = "out-of-fold validation predictions (fold_X/validation/predictions.json), pooled"


def _signed_logits(y_true: ArrayLike, y_prob: ArrayLike) -> np.ndarray:
    """``(2y - 1) * logit(p)``: positive where the case is on its class's side of 0.5."""
    labels, probs = _binary_inputs(y_true, y_prob)
    if np.unique(labels).size < 2:
        raise ValueError("the out-of-fold cases hold one class only")
    return (2 * labels - 1) * probability_logit(probs)


def temperature_nll(y_true: ArrayLike, y_prob: ArrayLike, temperature: float) -> float:
    """Mean negative log-likelihood (log loss, natural log) of the labels under the temperature-scaled
    probabilities, computed from the logits (finite even where a probability rounds to 0 or 1)."""
    return float(np.mean(np.logaddexp(0.0, -_signed_logits(y_true, y_prob) / temperature)))


def fit_temperature(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """The temperature that minimises the negative log-likelihood of binary labels (temperature scaling).

    With signed logits ``s = (2y - 1) * logit(p)`` and ``b = 1 / T`` the NLL is ``mean(log(1 + exp(-b s)))``, convex
    in ``b``; its derivative ``-mean(s * sigmoid(-b s))`` increases with ``b``, and its zero is found by Brent's
    method on a bracket grown from ``b = 1``.

    Parameters
    ----------
    y_true : array-like of shape (n_cases,)
        Labels, 0 or 1.
    y_prob : array-like of shape (n_cases,)
        Predicted probabilities of the positive class.

    Returns
    -------
    float
        The temperature ``T > 0``.

    Raises
    ------
    ValueError
        When no finite positive temperature minimises the NLL: one class only; every case on its class's side of
        0.5 (the NLL falls for ever as ``T -> 0``); or ``sum(s) <= 0`` (the NLL is smallest at ``b <= 0``: the
        probabilities rank the classes no better than chance).
    """
    signed = _signed_logits(y_true, y_prob)
    if not np.any(signed < 0):
        raise ValueError("the out-of-fold probabilities separate the classes perfectly: the NLL has no minimum "
                         "(it falls for ever as the temperature goes to 0)")
    if not np.sum(signed) > 0:
        raise ValueError("the out-of-fold probabilities rank the classes no better than chance: no positive "
                         "temperature minimises the NLL")

    def slope(inverse_temperature: float) -> float:
        return float(-np.mean(signed * expit(-inverse_temperature * signed)))

    high = INITIAL_INVERSE_TEMPERATURE
    while slope(high) < 0:  # ends: a misclassified case makes the slope positive for large b
        high *= 2
    return 1.0 / brentq(slope, 0.0, high, xtol=INVERSE_TEMPERATURE_TOLERANCE)


def fit_least_squares_debias(y_true: ArrayLike, y_pred: ArrayLike) -> Tuple[float, float]:
    """``(slope, intercept)`` of the least-squares line ``true ~ slope * pred + intercept``.

    Raises
    ------
    ValueError
        When the predictions are all equal (no line through them).
    """
    truth, pred = paired_vectors(y_true, y_pred, ("y_true", "y_pred"))
    if np.ptp(pred) == 0:
        raise ValueError("the out-of-fold predictions are all equal: no line maps them onto the true ages")
    dp = pred - pred.mean()
    slope = float(np.dot(dp, truth - truth.mean()) / np.dot(dp, dp))
    return slope, float(truth.mean() - slope * pred.mean())


def fit_cole_debias(y_true: ArrayLike, y_pred: ArrayLike) -> Tuple[float, float]:
    """``(slope, intercept)`` of de Lange & Cole's correction ``(pred - beta) / alpha``, i.e. ``1 / alpha`` and
    ``-beta / alpha``, where ``pred ~ alpha * true + beta`` is the least-squares line of the predictions on the ages.

    Raises
    ------
    ValueError
        When the true ages are all equal, or ``alpha <= 0`` (the predictions do not grow with age).
    """
    truth, pred = paired_vectors(y_true, y_pred, ("y_true", "y_pred"))
    if np.ptp(truth) == 0:
        raise ValueError("the out-of-fold true ages are all equal: no line of the predictions on them")
    dt = truth - truth.mean()
    alpha = float(np.dot(dt, pred - pred.mean()) / np.dot(dt, dt))
    if not alpha > 0:
        raise ValueError(f"the out-of-fold predictions do not grow with the true age (slope {alpha:.3g}): "
                         "inverting that line would not correct them")
    beta = float(pred.mean() - alpha * truth.mean())
    return 1.0 / alpha, -beta / alpha


def _diagnostics(task_type: str, targets: np.ndarray, predictions: Sequence[float]) -> Dict[str, float]:
    """What the calibration changes, on the cases it was fitted on (in-sample: optimistic for the after)."""
    if task_type == CLASSIFICATION:
        return {"ece": expected_calibration_error(targets, predictions),
                "nll": temperature_nll(targets, predictions, 1.0)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # a constant error: undefined r, null in JSON
        bias = age_bias(targets, predictions)
    return {"mae": float(np.mean(np.abs(np.asarray(predictions) - targets))), "bias_slope": bias["slope"],
            "bias_pearson_r": bias["pearson_r"]}


def fit_calibration(task_type: str, out_of_fold: Mapping[str, Tuple[str, float, float]],
                    age_fit: str = LEAST_SQUARES) -> Calibration:
    """The calibration of one model fitted on its out-of-fold predictions ``{case: (fold, target, prediction)}``
    (:func:`nnunet_ext.evaluation.model_selection.read_out_of_fold`); method ``none`` with the reason when the fit
    has no solution."""
    if age_fit not in AGE_FITS:
        raise ValueError(f"unknown age fit {age_fit!r}; expected one of {AGE_FITS}")
    cases = sorted(out_of_fold)
    targets = np.array([out_of_fold[c][1] for c in cases], dtype=float)
    predictions = np.array([out_of_fold[c][2] for c in cases], dtype=float)
    method = next(m for m, t in METHOD_TASK.items() if t == task_type)
    record: Dict[str, object] = {
        "task_type": task_type,
        "fitted_by": "fomo_find_best_configuration",
        "fitted_on": {"source": FITTED_ON, "folds": sorted({out_of_fold[c][0] for c in cases}),
                      "n_cases": len(cases), "cases": cases},
    }
    try:
        if method == TEMPERATURE:
            parameters = {"temperature": fit_temperature(targets, predictions)}
        else:
            fit = fit_least_squares_debias if age_fit == LEAST_SQUARES else fit_cole_debias
            parameters = dict(zip(("slope", "intercept"), fit(targets, predictions)))
            record["fit"] = age_fit
    except ValueError as e:
        log.warning("no calibration fitted: %s", e)
        return Calibration(NO_CALIBRATION, {}, {"method": NO_CALIBRATION, "reason": str(e), **record})
    after = Calibration(method, parameters, record).apply(predictions)
    record["out_of_fold_in_sample"] = {"before": _diagnostics(task_type, targets, predictions),
                                       "after": _diagnostics(task_type, targets, after)}
    return Calibration(method, parameters, {"method": method, "parameters": parameters, **record})


def write_calibration(model_folder: Path, calibration: Calibration) -> Path:
    """``model_folder/calibration.json``, written atomically."""
    path = model_folder / CALIBRATION_JSON
    atomic_write_json(path, json_safe(dict(calibration.record)))
    return path


"""Regression metrics against their textbook formulas written out with numpy, and against scikit-learn and SciPy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

from nnunet_ext.metrics import regression_metrics


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Covariance over the product of standard deviations."""
    da, db = a - a.mean(), b - b.mean()
    return float(np.sum(da * db) / np.sqrt(np.sum(da**2) * np.sum(db**2)))


def _ranks_without_ties(values: np.ndarray) -> np.ndarray:
    """Rank 1..n by sorting (valid when all values differ)."""
    ranks = np.empty(values.size)
    ranks[np.argsort(values)] = np.arange(1, values.size + 1)
    return ranks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_formulas(seed):
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, 30)
    predicted = age + rng.normal(3, 6, 30)
    m = regression_metrics(age, predicted)
    error = predicted - age
    assert m["n"] == 30
    assert m["mae"] == pytest.approx(np.mean(np.abs(error)))
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean(error**2)))
    assert m["r2"] == pytest.approx(1 - np.sum(error**2) / np.sum((age - age.mean()) ** 2))
    assert m["pearson_r"] == pytest.approx(_pearson(age, predicted))
    assert m["spearman_rho"] == pytest.approx(_pearson(_ranks_without_ties(age), _ranks_without_ties(predicted)))
    assert m["mean_error"] == pytest.approx(np.mean(error))


@pytest.mark.parametrize("n", [3, 12, 100])
def test_metrics_equal_sklearn_and_scipy_on_bootstrap_like_samples(n):
    # repeated cases and ages in whole years: the ties bootstrap resamples of real predictions hold
    rng = np.random.default_rng(n)
    for _ in range(30):
        age = np.round(rng.uniform(20, 80, n))
        predicted = np.round(age + rng.normal(0, 8, n), 1)
        resample = rng.integers(0, n, n)
        age, predicted = age[resample], predicted[resample]
        if np.ptp(age) == 0 or np.ptp(predicted) == 0:
            continue
        m = regression_metrics(age, predicted)
        assert m["mae"] == pytest.approx(mean_absolute_error(age, predicted), rel=1e-12)
        assert m["rmse"] == pytest.approx(root_mean_squared_error(age, predicted), rel=1e-12)
        assert m["r2"] == pytest.approx(r2_score(age, predicted), rel=1e-9, abs=1e-12)
        assert m["pearson_r"] == pytest.approx(pearsonr(age, predicted).statistic, abs=1e-12)
        assert m["spearman_rho"] == pytest.approx(spearmanr(age, predicted).statistic, abs=1e-12)


def test_spearman_uses_average_ranks_for_ties():
    # Ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]; of [1, 3, 2, 4] they are the values themselves.
    m = regression_metrics([1, 2, 2, 3], [1, 3, 2, 4])
    assert m["spearman_rho"] == pytest.approx(_pearson(np.array([1, 2.5, 2.5, 4]), np.array([1.0, 3, 2, 4])))


def test_bias_sign_means_overestimation():
    assert regression_metrics([50, 60], [55, 66])["mean_error"] == pytest.approx(5.5)


def test_constant_predictions_leave_correlations_undefined():
    with pytest.warns(UndefinedMetricWarning) as record:
        m = regression_metrics([30, 40, 50], [45, 45, 45])
    assert np.isnan(m["pearson_r"]) and np.isnan(m["spearman_rho"])
    assert all("y_pred is constant" in str(w.message) for w in record)
    assert m["mae"] == pytest.approx((15 + 5 + 5) / 3)
    assert m["r2"] == pytest.approx(1 - (225 + 25 + 25) / (100 + 0 + 100))  # defined: y_true varies


def test_constant_truth_leaves_r2_undefined():
    with pytest.warns(UndefinedMetricWarning, match="y_true is constant"):
        m = regression_metrics([40, 40, 40], [38, 41, 45])
    assert np.isnan(m["r2"]) and np.isnan(m["pearson_r"])
    assert m["rmse"] == pytest.approx(np.sqrt((4 + 1 + 25) / 3))


@pytest.mark.parametrize(
    "y_true, y_pred, message",
    [([1, 2], [1], "length"), ([1, np.inf], [1, 2], "infinite"), ([[1, 2]], [[1, 2]], "1-D")],
)
def test_invalid_input_is_refused(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        regression_metrics(y_true, y_pred)

"""Calibration's pure functions against independent implementations: reliability bins against scikit-learn's
calibration_curve, the ECE against a hand computation, the temperature against SciPy's minimiser of scikit-learn's
log loss, the age de-bias and the age bias against numpy.polyfit and scipy.stats.pearsonr."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import softmax
from scipy.stats import pearsonr
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss

from nnunet_ext.evaluation.calibration import (
    COLE,
    LEAST_SQUARES,
    fit_calibration,
    fit_cole_debias,
    fit_least_squares_debias,
    fit_temperature,
)
from nnunet_ext.inference.calibration import NO_CALIBRATION, TEMPERATURE
from nnunet_ext.metrics.calibration import (
    PROBABILITY_RESOLUTION,
    age_bias,
    expected_calibration_error,
    reliability_bins,
    temperature_scaled,
)

#: Temperatures the reference search may return: wide enough for every data set below.
TEMPERATURE_SEARCH = (0.01, 100.0)


def logistic_cases(true_temperature: float, n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z / true_temperature) and the probabilities sigmoid(z) a model reports: overconfident
    for a true temperature above 1, underconfident below."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-logits / true_temperature))).astype(int)
    return labels, 1 / (1 + np.exp(-logits))


def reference_temperature(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature minimising scikit-learn's log loss, found by SciPy's bounded scalar minimiser on the
    log-temperature."""
    result = minimize_scalar(lambda log_t: log_loss(labels, temperature_scaled(probabilities, np.exp(log_t)),
                                                    labels=[0, 1]),
                             bounds=np.log(TEMPERATURE_SEARCH), method="bounded", options={"xatol": 1e-10})
    return float(np.exp(result.x))


def test_reliability_bins_agree_with_sklearns_calibration_curve_including_probabilities_on_bin_edges() -> None:
    rng = np.random.default_rng(3)
    probabilities = np.concatenate([rng.random(60), [0.0, 0.1, 0.3, 0.5, 0.7, 1.0]])  # edges fall into the lower bin
    labels = (rng.random(probabilities.size) < probabilities).astype(int)
    bins = reliability_bins(labels, probabilities, n_bins=10)

    prob_true, prob_pred = calibration_curve(labels, probabilities, n_bins=10, strategy="uniform")
    filled = bins["count"] > 0
    np.testing.assert_allclose(bins["observed_frequency"][filled], prob_true)
    np.testing.assert_allclose(bins["mean_probability"][filled], prob_pred)
    assert bins["count"].sum() == probabilities.size


def test_ece_equals_a_hand_computation() -> None:
    # 4 bins; bin [0, .25]: 0.1, 0.2 (labels 0, 1); (.25, .5]: 0.5 (label 1); (.5, .75]: empty; (.75, 1]: 0.8, 0.9,
    # 1.0 (labels 1, 1, 0)
    labels = [0, 1, 1, 1, 1, 0]
    probabilities = [0.1, 0.2, 0.5, 0.8, 0.9, 1.0]
    by_hand = (2 * abs(0.5 - 0.15) + 1 * abs(1.0 - 0.5) + 3 * abs(2 / 3 - 0.9)) / 6
    assert expected_calibration_error(labels, probabilities, n_bins=4) == pytest.approx(by_hand)


def test_temperature_scaling_is_the_softmax_of_logits_divided_by_t() -> None:
    logits = np.array([[0.3, 2.1], [1.5, -0.4], [0.0, 0.0], [-3.0, 4.0]])
    probabilities = softmax(logits, axis=1)[:, 1]
    np.testing.assert_allclose(temperature_scaled(probabilities, 1.7), softmax(logits / 1.7, axis=1)[:, 1])
    # a float32 probability rounded to 1.0 gives a finite, very confident probability, not NaN
    assert 1 - PROBABILITY_RESOLUTION <= temperature_scaled([1.0], 1.0)[0] < 1.0


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fitted_temperature_minimises_sklearns_log_loss(true_temperature: float) -> None:
    labels, probabilities = logistic_cases(true_temperature)
    fitted = fit_temperature(labels, probabilities)

    assert fitted == pytest.approx(reference_temperature(labels, probabilities), rel=1e-5)
    assert (fitted > 1) == (true_temperature > 1)  # overconfident probabilities get T > 1
    assert expected_calibration_error(labels, temperature_scaled(probabilities, fitted)) < \
        expected_calibration_error(labels, probabilities)


@pytest.mark.parametrize("labels, probabilities, reason", [
    ([0, 1, 0, 1], [0.2, 0.8, 0.4, 0.6], "separate the classes perfectly"),
    ([0, 1, 0, 1], [0.8, 0.2, 0.6, 0.4], "no better than chance"),
    ([1, 1, 1], [0.2, 0.8, 0.6], "one class"),
])
def test_temperature_without_a_finite_minimum_is_refused_and_stored_as_none(labels, probabilities, reason) -> None:
    with pytest.raises(ValueError, match=reason):
        fit_temperature(labels, probabilities)
    cases = {f"c{i}": ("0", float(t), float(p)) for i, (t, p) in enumerate(zip(labels, probabilities))}
    calibration = fit_calibration("classification", cases)
    assert calibration.method == NO_CALIBRATION and reason in calibration.record["reason"]
    assert calibration.apply(probabilities) == pytest.approx(probabilities)


def brain_ages(seed: int = 0, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """True ages and predictions that regress to the mean: pred = 0.6 * age + 20 + noise."""
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 80, n)
    return ages, 0.6 * ages + 20 + rng.normal(0, 3, n)


def test_least_squares_debias_is_polyfit_of_true_on_predicted() -> None:
    ages, predictions = brain_ages()
    np.testing.assert_allclose(fit_least_squares_debias(ages, predictions), np.polyfit(predictions, ages, 1))


def test_cole_debias_inverts_polyfit_of_predicted_on_true_and_removes_the_age_bias() -> None:
    ages, predictions = brain_ages()
    alpha, beta = np.polyfit(ages, predictions, 1)
    slope, intercept = fit_cole_debias(ages, predictions)
    np.testing.assert_allclose([slope, intercept], [1 / alpha, -beta / alpha])
    corrected = slope * predictions + intercept
    assert age_bias(ages, corrected)["slope"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="do not grow"):
        fit_cole_debias(ages, -predictions)


def test_age_bias_is_the_line_of_the_error_on_the_true_age() -> None:
    ages, predictions = brain_ages(seed=1)
    bias = age_bias(ages, predictions)
    slope, intercept = np.polyfit(ages, predictions - ages, 1)
    assert (bias["slope"], bias["intercept"]) == (pytest.approx(slope), pytest.approx(intercept))
    assert bias["pearson_r"] == pytest.approx(pearsonr(ages, predictions - ages)[0])
    assert bias["mean_error"] == pytest.approx(np.mean(predictions - ages))
    assert age_bias(ages, np.full_like(ages, 50.0))["slope"] == pytest.approx(-1.0)  # a constant regresses fully


@pytest.mark.parametrize("age_fit", [LEAST_SQUARES, COLE])
def test_fitted_age_calibration_applies_its_line_and_reduces_the_bias(age_fit: str) -> None:
    ages, predictions = brain_ages(seed=2)
    cases = {f"c{i}": (str(i % 5), float(a), float(p)) for i, (a, p) in enumerate(zip(ages, predictions))}
    calibration = fit_calibration("regression", cases, age_fit)

    reference = fit_least_squares_debias if age_fit == LEAST_SQUARES else fit_cole_debias
    order = sorted(cases)
    slope, intercept = reference([cases[c][1] for c in order], [cases[c][2] for c in order])
    assert calibration.apply([30.0, 60.0]) == pytest.approx([slope * 30 + intercept, slope * 60 + intercept])
    diagnostics = calibration.record["out_of_fold_in_sample"]
    assert abs(diagnostics["after"]["bias_slope"]) < abs(diagnostics["before"]["bias_slope"])
    assert calibration.record["fitted_on"]["folds"] == ["0", "1", "2", "3", "4"]


def test_fitted_classification_calibration_is_temperature_scaling() -> None:
    labels, probabilities = logistic_cases(2.0, n=100)
    cases = {f"c{i:03d}": ("0", float(t), float(p)) for i, (t, p) in enumerate(zip(labels, probabilities))}
    calibration = fit_calibration("classification", cases)
    assert calibration.method == TEMPERATURE
    temperature = calibration.parameters["temperature"]
    assert temperature == pytest.approx(reference_temperature(labels, probabilities), rel=1e-5)
    assert calibration.apply([0.9]) == pytest.approx(temperature_scaled([0.9], temperature))

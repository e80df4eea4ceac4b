"""Bootstrap confidence intervals: agreement with SciPy's, seeding, pairing, undefined resamples."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import bootstrap as scipy_bootstrap
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import roc_auc_score

from bootstrap_reference import auroc, percentile_interval, percentiles, resampled_values, sklearn_classification
from nnunet_ext.metrics import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    SEGMENTATION_METRICS,
    bootstrap_ci,
    classification_metrics,
    metrics_with_ci,
    regression_metrics,
)

N_RESAMPLES = 200  # enough to check the mechanics; keeps the tests fast
#: Resamples rebuilt and scored by scikit-learn (slow per call) in the reference checks.
REFERENCE_RESAMPLES = 60


def _auroc_or_nan(y, p) -> float:
    return roc_auc_score(y, p) if np.unique(y).size == 2 else float("nan")


def test_mean_interval_agrees_with_scipy_percentile_bootstrap():
    values = np.random.default_rng(0).normal(10, 2, 60)
    ours = bootstrap_ci(np.mean, values, n_resamples=4000, confidence=0.9, seed=1)
    theirs = scipy_bootstrap(
        (values,), np.mean, n_resamples=4000, confidence_level=0.9, method="percentile", rng=2
    ).confidence_interval
    width = theirs.high - theirs.low
    # Different random draws: the bounds agree up to Monte Carlo error, a few percent of the width.
    assert ours.low == pytest.approx(theirs.low, abs=0.1 * width)
    assert ours.high == pytest.approx(theirs.high, abs=0.1 * width)
    assert (ours.n_resamples, ours.n_undefined) == (4000, 0)


#: Small, skewed cases: percentile, basic and normal intervals differ by several percent of the range here.
SKEWED_N_RESAMPLES = 200


def basic_and_normal(values: np.ndarray, point: float, confidence: float) -> list[tuple[float, float]]:
    """The basic and the normal bootstrap interval of the same resampled ``values`` (what a wrong method gives)."""
    low, high = np.percentile(values, [50 * (1 - confidence), 50 * (1 + confidence)])
    spread = 1.959963984540054 * values.std(ddof=1)
    return [(2 * point - high, 2 * point - low), (point - spread, point + spread)]


def test_auroc_interval_at_small_n_is_the_percentile_interval_of_the_seeded_resamples():
    rng = np.random.default_rng(11)
    y = np.array([0] * 8 + [1] * 4)
    p = np.clip(0.35 * y + 0.65 * rng.random(12), 0, 1)
    ours = bootstrap_ci(roc_auc_score, y, p, n_resamples=SKEWED_N_RESAMPLES, seed=5)
    values = resampled_values(auroc, (y, p), SKEWED_N_RESAMPLES, seed=5)
    expected = percentiles(values)
    assert (ours.low, ours.high) == pytest.approx(expected, abs=1e-12)
    assert ours.n_undefined == np.isnan(values).sum() > 0  # resamples of one class are skipped and counted
    # the check tells the methods apart: the basic and normal intervals lie far from the percentile one
    for other in basic_and_normal(values[~np.isnan(values)], roc_auc_score(y, p), 0.95):
        assert max(abs(other[0] - expected[0]), abs(other[1] - expected[1])) > 0.03


def test_median_interval_is_the_percentile_interval_of_the_seeded_resamples():
    values = np.random.default_rng(3).exponential(10.0, 15)
    ours = bootstrap_ci(np.median, values, n_resamples=SKEWED_N_RESAMPLES, confidence=0.9, seed=2)
    medians = resampled_values(np.median, (values,), SKEWED_N_RESAMPLES, seed=2)
    expected = percentiles(medians, 0.9)
    assert (ours.low, ours.high) == pytest.approx(expected, abs=1e-12)
    for other in basic_and_normal(medians, float(np.median(values)), 0.9):
        assert max(abs(other[0] - expected[0]), abs(other[1] - expected[1])) > 0.5


def test_same_seed_same_interval_other_seed_other_interval():
    values = np.random.default_rng(0).normal(size=30)
    first = bootstrap_ci(np.mean, values, n_resamples=N_RESAMPLES, seed=3)
    assert bootstrap_ci(np.mean, values, n_resamples=N_RESAMPLES, seed=3) == first
    assert bootstrap_ci(np.mean, values, n_resamples=N_RESAMPLES, seed=4) != first


def test_arrays_are_resampled_in_pairs():
    values = np.random.default_rng(0).normal(size=25)
    interval = bootstrap_ci(lambda a, b: float(np.max(np.abs(a - b))), values, values.copy(), n_resamples=50)
    assert (interval.low, interval.high) == (0.0, 0.0)


def test_wider_confidence_gives_wider_interval():
    values = np.random.default_rng(0).normal(size=40)
    narrow = bootstrap_ci(np.mean, values, n_resamples=N_RESAMPLES, confidence=0.5)
    wide = bootstrap_ci(np.mean, values, n_resamples=N_RESAMPLES, confidence=0.99)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_undefined_resamples_are_skipped_and_counted():
    y = np.array([1] + [0] * 9)
    p = np.linspace(0.9, 0.0, 10)
    interval = bootstrap_ci(_auroc_or_nan, y, p, n_resamples=1000, seed=0)
    # A resample misses the single positive case with probability 0.9 ** 10 = 0.35.
    assert interval.n_undefined == pytest.approx(0.9**10 * 1000, abs=50)
    assert interval.low == interval.high == 1.0  # every defined resample ranks the positive first


def test_interval_undefined_on_every_resample_is_nan():
    with pytest.warns(UndefinedMetricWarning, match="every resample"):
        interval = bootstrap_ci(_auroc_or_nan, [1, 1, 1], [0.2, 0.4, 0.6], n_resamples=20)
    assert np.isnan(interval.low) and np.isnan(interval.high)
    assert interval.n_undefined == 20


@pytest.mark.parametrize("kwargs, message", [({"n_resamples": 0}, "n_resamples"), ({"confidence": 1.0}, "confidence")])
def test_invalid_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(np.mean, [1.0, 2.0], **kwargs)


def test_inputs_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="one entry per case"):
        bootstrap_ci(lambda a, b: 0.0, [1, 2, 3], [1, 2])


def test_metrics_with_ci_classification():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    p = np.clip(0.4 * y + 0.6 * rng.random(40), 0, 1)
    result = metrics_with_ci("classification", y, p, n_resamples=REFERENCE_RESAMPLES, threshold=0.4)
    point = classification_metrics(y, p, threshold=0.4)
    assert list(result) == list(CLASSIFICATION_METRICS)
    for name, entry in result.items():
        assert entry["value"] == pytest.approx(point[name])
        assert entry["n_undefined_resamples"] == 0
    # the percentile interval of each metric on the resamples rebuilt from the (default) seed, by scikit-learn
    for name, statistic in sklearn_classification(0.4).items():
        expected = percentile_interval(statistic, y, p, n_resamples=REFERENCE_RESAMPLES, seed=0)
        assert (result[name]["ci_low"], result[name]["ci_high"]) == pytest.approx(expected, abs=1e-12), name
    auroc_alone = bootstrap_ci(roc_auc_score, y, p, n_resamples=REFERENCE_RESAMPLES)
    # Same seed, same resamples: the AUROC interval is the one bootstrap_ci gives for AUROC alone.
    assert (result["auroc"]["ci_low"], result["auroc"]["ci_high"]) == (auroc_alone.low, auroc_alone.high)


def test_metrics_with_ci_regression():
    rng = np.random.default_rng(1)
    age = rng.uniform(20, 80, 30)
    predicted = age + rng.normal(0, 5, 30)
    result = metrics_with_ci("regression", age, predicted, n_resamples=N_RESAMPLES)
    assert list(result) == list(REGRESSION_METRICS)
    assert result["mae"]["value"] == pytest.approx(regression_metrics(age, predicted)["mae"])
    assert 0 < result["mae"]["ci_low"] < result["mae"]["value"] < result["mae"]["ci_high"]


def test_metrics_with_ci_segmentation_bootstraps_per_case_means():
    rng = np.random.default_rng(2)
    per_case = [
        {"case": f"sub_{i}_ses_1", "dice": d, "iou": d / (2 - d), "hd95": 3 * (1 - d), "assd": 1 - d, "nsd": d}
        for i, d in enumerate(rng.uniform(0.5, 0.95, 20))
    ]
    per_case[0].update(dice=0.0, iou=0.0, nsd=0.0, hd95=float("nan"), assd=float("nan"))  # a missed lesion
    result = metrics_with_ci("segmentation", per_case, n_resamples=N_RESAMPLES)
    assert list(result) == list(SEGMENTATION_METRICS)
    dice = np.array([case["dice"] for case in per_case])
    assert result["dice"]["value"] == pytest.approx(dice.mean())
    assert result["hd95"]["value"] == pytest.approx(np.nanmean([case["hd95"] for case in per_case]))
    expected = bootstrap_ci(np.mean, dice, n_resamples=N_RESAMPLES)
    assert (result["dice"]["ci_low"], result["dice"]["ci_high"]) == pytest.approx((expected.low, expected.high))


def test_unknown_task_type_is_refused():
    with pytest.raises(ValueError, match="unknown task type"):
        metrics_with_ci("detection", [1], [1])

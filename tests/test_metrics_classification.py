"""Classification metrics against scikit-learn's own functions and brute-force definitions."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction

import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from nnunet_ext.evaluation.report import json_safe
from nnunet_ext.metrics import classification_metrics, confusion_counts, youden_threshold


def _random_case(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Labels with both classes and probabilities rounded to 1 decimal, so that ties occur."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = (0, 1)
    p = np.round(np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1), 1)
    return y, p


def _auroc_brute_force(y: np.ndarray, p: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative, ties counting one half."""
    pairs = [(pos, neg) for pos, neg in itertools.product(p[y == 1], p[y == 0])]
    return float(np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs]))


def _average_precision_brute_force(y: np.ndarray, p: np.ndarray) -> float:
    """Sum over distinct thresholds (descending) of (recall gain) x precision at that threshold."""
    total, previous_recall = 0.0, 0.0
    for t in sorted(set(p), reverse=True):
        called = p >= t
        recall = np.sum(called & (y == 1)) / np.sum(y == 1)
        total += (recall - previous_recall) * np.sum(called & (y == 1)) / np.sum(called)
        previous_recall = recall
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.7])
def test_threshold_metrics_match_sklearn(seed, threshold):
    y, p = _random_case(seed)
    predicted = (p >= threshold).astype(int)
    m = classification_metrics(y, p, threshold)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, predicted))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, predicted))
    assert m["precision"] == pytest.approx(precision_score(y, predicted))
    assert m["sensitivity"] == pytest.approx(recall_score(y, predicted))
    assert m["specificity"] == pytest.approx(recall_score(y, predicted, pos_label=0))
    assert m["f1"] == pytest.approx(f1_score(y, predicted))
    assert (m["n"], m["n_positive"], m["threshold"]) == (y.size, int(y.sum()), threshold)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_metrics_match_brute_force(seed):
    y, p = _random_case(seed)
    m = classification_metrics(y, p)
    assert m["auroc"] == pytest.approx(_auroc_brute_force(y, p))
    assert m["average_precision"] == pytest.approx(_average_precision_brute_force(y, p))


@pytest.mark.parametrize("n, positive_rate, decimals", [(3, 0.5, 1), (10, 0.2, 1), (40, 0.5, 2), (200, 0.1, 3)])
def test_counts_and_ranking_metrics_equal_sklearn_on_bootstrap_like_samples(n, positive_rate, decimals):
    # our NumPy implementations against scikit-learn's, on samples with repeated cases and tied scores (what
    # bootstrap resamples look like)
    rng = np.random.default_rng(n)
    for _ in range(50):
        y = (rng.random(n) < positive_rate).astype(int)
        p = np.round(np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1), decimals)
        resample = rng.integers(0, n, n)
        y, p = y[resample], p[resample]
        m = classification_metrics(y, p)
        tn, fp, fn, tp = confusion_matrix(y, (p >= 0.5).astype(int), labels=[0, 1]).ravel()
        assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (tn, fp, fn, tp)
        if 0 < y.sum() < n:
            assert m["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        if y.sum():
            assert m["average_precision"] == pytest.approx(average_precision_score(y, p), abs=1e-12)


def test_confusion_counts_by_counting_and_threshold_inclusive():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.5, 0.5, 0.9, 0.2, 0.7])
    counts = confusion_counts(y, p, threshold=0.5)
    called = [prob >= 0.5 for prob in p]  # a probability equal to the threshold is called positive
    expected = {
        "tn": sum(not c and t == 0 for c, t in zip(called, y)),
        "fp": sum(c and t == 0 for c, t in zip(called, y)),
        "fn": sum(not c and t == 1 for c, t in zip(called, y)),
        "tp": sum(c and t == 1 for c, t in zip(called, y)),
    }
    assert counts == expected == {"tn": 1, "fp": 2, "fn": 1, "tp": 2}
    assert {k: classification_metrics(y, p)[k] for k in expected} == expected


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_youden_threshold_maximises_j_by_brute_force(seed):
    y, p = _random_case(seed)

    def youden_j(t: float) -> float:
        called = p >= t
        return np.mean(called[y == 1]) + np.mean(~called[y == 0]) - 1

    best_j = max(youden_j(t) for t in np.unique(p))
    threshold = youden_threshold(y, p)
    assert threshold in p
    assert youden_j(threshold) == pytest.approx(best_j)
    # The highest of equally good thresholds is returned.
    assert threshold == max(t for t in np.unique(p) if np.isclose(youden_j(t), best_j))


#: Random label sets for the exact tie test: about 2 % of them tie in J up to float rounding (39 of 1,995 picked
#: another threshold than the first exact maximum when J was compared in floating point).
N_TIE_CASES = 2000


def test_youden_threshold_is_the_highest_exact_maximum_of_j():
    rng = np.random.default_rng(20250)
    for _ in range(N_TIE_CASES):
        n = int(rng.integers(4, 60))
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)
        p = np.round(rng.random(n), 1)
        n_pos, n_neg = int(y.sum()), int(n - y.sum())

        def exact_j(t: float) -> Fraction:
            called = p >= t
            return Fraction(int(called[y == 1].sum()), n_pos) - Fraction(int(called[y == 0].sum()), n_neg)

        best = max(exact_j(t) for t in np.unique(p))
        expected = max(t for t in np.unique(p) if exact_j(t) == best)
        assert youden_threshold(y, p) == expected, (y.tolist(), p.tolist())


def test_youden_threshold_separable_data():
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8]) == 0.6


def test_youden_threshold_refuses_one_class():
    with pytest.raises(ValueError, match="both classes"):
        youden_threshold([1, 1, 1], [0.2, 0.6, 0.9])


def test_one_class_only_gives_nan_with_reason_and_valid_json():
    with pytest.warns(UndefinedMetricWarning) as record:
        m = classification_metrics([1, 1, 1], [0.2, 0.6, 0.9])
    reasons = " ".join(str(w.message) for w in record)
    assert "auroc is undefined: y_true holds one class only" in reasons
    assert "specificity is undefined: no negative cases" in reasons
    for name in ("auroc", "specificity", "balanced_accuracy"):
        assert np.isnan(m[name]), name
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["average_precision"] == pytest.approx(1.0)
    text = json.dumps(json_safe(m), allow_nan=False)
    assert json.loads(text)["auroc"] is None


def test_no_positive_labels_or_predictions():
    with pytest.warns(UndefinedMetricWarning):
        m = classification_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    for name in ("sensitivity", "precision", "f1", "auroc", "average_precision", "balanced_accuracy"):
        assert np.isnan(m[name]), name
    assert m["specificity"] == m["accuracy"] == 1.0


def test_nothing_called_positive_leaves_precision_undefined():
    with pytest.warns(UndefinedMetricWarning, match="precision"):
        m = classification_metrics([0, 1, 1], [0.1, 0.2, 0.3])
    assert np.isnan(m["precision"])
    assert m["f1"] == 0.0 and m["sensitivity"] == 0.0


@pytest.mark.parametrize(
    "y_true, y_prob, message",
    [
        ([0, 2], [0.1, 0.2], "0 and 1"),
        ([0, 1], [0.1, 1.2], r"\[0, 1\]"),
        ([0, 1], [0.1], "length"),
        ([], [], "non-empty"),
        ([0, 1], [0.1, np.nan], "NaN"),
    ],
)
def test_invalid_input_is_refused(y_true, y_prob, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(y_true, y_prob)

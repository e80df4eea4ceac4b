"""Cross-validation summaries (mean +- std over folds, pooled out-of-fold) and per-case means."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import mean_absolute_error, roc_auc_score

from nnunet_ext.metrics import cross_validation_summary, fold_mean_std, mean_case_metrics


def _folds(seed: int, n_folds: int = 5, n: int = 12) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    folds = []
    for _ in range(n_folds):
        y = np.array([0, 1] + list(rng.integers(0, 2, n - 2)))
        folds.append((y, np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)))
    return folds


def test_classification_summary_mean_std_and_pooled():
    folds = _folds(0)
    summary = cross_validation_summary("classification", folds, threshold=0.5)
    per_fold_auroc = [roc_auc_score(y, p) for y, p in folds]
    assert [fold["auroc"] for fold in summary["per_fold"]] == pytest.approx(per_fold_auroc)
    assert summary["mean_std"]["auroc"]["mean"] == pytest.approx(np.mean(per_fold_auroc))
    assert summary["mean_std"]["auroc"]["std"] == pytest.approx(np.std(per_fold_auroc, ddof=1))
    assert summary["mean_std"]["auroc"]["n_folds"] == 5
    all_y = np.concatenate([y for y, _ in folds])
    all_p = np.concatenate([p for _, p in folds])
    assert summary["pooled"]["auroc"] == pytest.approx(roc_auc_score(all_y, all_p))
    assert summary["pooled"]["n"] == 60


def test_regression_summary_pooled_mae():
    rng = np.random.default_rng(1)
    folds = [(a, a + rng.normal(0, 4, a.size)) for a in (rng.uniform(20, 80, 8) for _ in range(3))]
    summary = cross_validation_summary("regression", folds)
    all_true = np.concatenate([t for t, _ in folds])
    all_pred = np.concatenate([p for _, p in folds])
    assert summary["pooled"]["mae"] == pytest.approx(mean_absolute_error(all_true, all_pred))


def test_segmentation_summary_pools_cases():
    folds = [([{"dice": d, "iou": d, "hd95": 1.0, "assd": 1.0, "nsd": d}] * 2,) for d in (0.6, 0.8, 0.9)]
    summary = cross_validation_summary("segmentation", folds)
    assert summary["pooled"]["dice"] == pytest.approx(np.mean([0.6, 0.8, 0.9]))
    assert summary["pooled"]["n_cases"] == 6
    assert summary["mean_std"]["dice"]["std"] == pytest.approx(np.std([0.6, 0.8, 0.9], ddof=1))


def test_fold_where_metric_is_undefined_is_left_out():
    with pytest.warns(UndefinedMetricWarning, match="fewer than two folds"):
        summary = fold_mean_std([{"auroc": 0.8}, {"auroc": float("nan")}], ["auroc"])
    assert summary["auroc"]["mean"] == 0.8 and summary["auroc"]["n_folds"] == 1
    assert np.isnan(summary["auroc"]["std"])


def test_mean_case_metrics_leaves_out_and_counts_undefined_distances():
    cases = [
        {"case": "sub_1_ses_1", "dice": 0.8, "iou": 0.67, "hd95": 2.0, "assd": 0.5, "nsd": 0.9},
        {"case": "sub_2_ses_1", "dice": 0.0, "iou": 0.0, "hd95": float("nan"), "assd": float("nan"), "nsd": 0.0},
    ]
    summary = mean_case_metrics(cases)
    assert summary["dice"] == pytest.approx(0.4)
    assert summary["hd95"] == 2.0 and summary["assd"] == 0.5
    assert (summary["n_cases"], summary["n_cases_distance_undefined"]) == (2, 1)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: cross_validation_summary("classification", []), "folds is empty"),
        (lambda: cross_validation_summary("classification", [([0, 1], [0.2, 0.8]), ([0, 1],)]), "same number"),
        (lambda: mean_case_metrics([]), "no cases"),
    ],
)
def test_empty_or_ragged_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()

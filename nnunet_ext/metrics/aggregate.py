"""Summaries over cases and over cross-validation folds, for all three task types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION, REGRESSION, SEGMENTATION
from nnunet_ext.metrics._common import undefined
from nnunet_ext.metrics.classification import CLASSIFICATION_METRICS, classification_metrics
from nnunet_ext.metrics.regression import REGRESSION_METRICS, regression_metrics
from nnunet_ext.metrics.segmentation import SEGMENTATION_METRICS

#: Sample standard deviation over folds (n - 1 in the denominator): the folds are a sample of the
#: training sets one could have drawn.
FOLD_STD_DDOF = 1


def mean_case_metrics(per_case: Sequence[Mapping[str, float]]) -> dict[str, float | int]:
    """Mean of each segmentation metric over cases, each case weighing the same (as in the challenge).

    Cases where a metric is NaN (a surface distance when exactly one mask is empty) are left out of
    that metric's mean and counted in ``n_cases_distance_undefined``: averaging them in is impossible,
    and the count shows how many missed lesions or false alarms the mean distance does not see.

    Parameters
    ----------
    per_case : sequence of dict
        One :func:`~nnunet_ext.metrics.segmentation.segmentation_metrics` result per case; other
        keys (a case identifier, say) are ignored.

    Returns
    -------
    dict
        The mean of each metric of :data:`SEGMENTATION_METRICS` (NaN if it is undefined in every case),
        ``n_cases`` and ``n_cases_distance_undefined``.
    """
    if len(per_case) == 0:
        raise ValueError("per_case is empty: no cases to average")
    table = np.array([[case[name] for name in SEGMENTATION_METRICS] for case in per_case], dtype=float)
    defined = ~np.isnan(table)
    summary: dict[str, float | int] = {}
    for column, name in enumerate(SEGMENTATION_METRICS):
        values = table[defined[:, column], column]
        summary[name] = float(values.mean()) if values.size else undefined(name, "undefined in every case")
    summary["n_cases"] = len(per_case)
    summary["n_cases_distance_undefined"] = int(np.count_nonzero(~defined.all(axis=1)))
    return summary


@dataclass(frozen=True)
class TaskMetrics:
    """How one task type is scored: its metrics function and the names of the metrics it returns.

    ``compute`` takes case-aligned sequences: ``(y_true, y_prob)`` for classification (and a
    ``threshold`` keyword), ``(y_true, y_pred)`` for regression, ``(per_case_metrics,)`` for
    segmentation, where each element is one case's :func:`segmentation_metrics` dict.
    """

    compute: Callable[..., dict[str, Any]]
    names: tuple[str, ...]


#: Metrics function and metric names per task type (``tasks.CLASSIFICATION`` etc.).
TASK_METRICS: dict[str, TaskMetrics] = {
    CLASSIFICATION: TaskMetrics(classification_metrics, CLASSIFICATION_METRICS),
    REGRESSION: TaskMetrics(regression_metrics, REGRESSION_METRICS),
    SEGMENTATION: TaskMetrics(mean_case_metrics, SEGMENTATION_METRICS),
}


def task_metrics(task_type: str) -> TaskMetrics:
    """Look up :data:`TASK_METRICS`; raise ``ValueError`` naming the known task types otherwise."""
    try:
        return TASK_METRICS[task_type]
    except KeyError:
        raise ValueError(f"unknown task type {task_type!r}; expected one of {sorted(TASK_METRICS)}") from None


def fold_mean_std(per_fold: Sequence[Mapping[str, float]], names: Sequence[str]) -> dict[str, dict[str, float | int]]:
    """Mean and sample standard deviation of each metric over cross-validation folds.

    A fold where a metric is NaN (AUROC of a fold with one class) is left out of that metric.

    Parameters
    ----------
    per_fold : sequence of dict
        One metrics dict per fold.
    names : sequence of str
        The metrics to summarise.

    Returns
    -------
    dict
        ``{name: {"mean", "std", "n_folds"}}`` where ``n_folds`` counts the folds where the metric is
        defined; ``std`` (ddof=1) is NaN with fewer than two such folds, ``mean`` with none.
    """
    summary = {}
    for name in names:
        values = np.array([fold[name] for fold in per_fold], dtype=float)
        values = values[~np.isnan(values)]
        summary[name] = {
            "mean": float(values.mean()) if values.size else undefined(name, "undefined in every fold"),
            "std": (
                float(values.std(ddof=FOLD_STD_DDOF))
                if values.size > FOLD_STD_DDOF
                else undefined(f"std of {name}", "defined in fewer than two folds")
            ),
            "n_folds": int(values.size),
        }
    return summary


def _pool(folds: Sequence[Sequence[Any]]) -> list[np.ndarray]:
    """Concatenate each position of the folds' data tuples (all y_true, all y_pred, ...) across folds."""
    arity = {len(fold) for fold in folds}
    if len(arity) != 1:
        raise ValueError(f"every fold must give the same number of sequences, got {sorted(arity)}")
    return [np.concatenate([np.asarray(fold[i]) for fold in folds]) for i in range(arity.pop())]


def cross_validation_summary(task_type: str, folds: Sequence[Sequence[Any]], **metric_kwargs: Any) -> dict[str, Any]:
    """Cross-validation results as per-fold metrics, their mean +- std, and pooled out-of-fold metrics.

    Pooled metrics are computed once on all folds' validation cases together (each case is in exactly
    one validation fold). They are what model selection ranks by: with small folds, a per-fold AUROC
    is noisy or undefined, and the mean over folds weighs a small fold like a large one.

    Parameters
    ----------
    task_type : {"classification", "regression", "segmentation"}
        Selects the metrics (:data:`TASK_METRICS`).
    folds : sequence of tuples
        Per fold, its validation data as for ``TASK_METRICS[task_type].compute``: ``(y_true, y_prob)``,
        ``(y_true, y_pred)`` or ``(per_case_metrics,)``.
    **metric_kwargs
        Passed to the metrics function, e.g. ``threshold=`` for classification.

    Returns
    -------
    dict
        ``{"per_fold": [metrics dict per fold], "mean_std": fold_mean_std(...), "pooled": metrics dict}``.
    """
    if len(folds) == 0:
        raise ValueError("folds is empty")
    scoring = task_metrics(task_type)
    pooled = _pool(folds)  # first, as it checks that every fold gives the same sequences
    per_fold = [scoring.compute(*fold, **metric_kwargs) for fold in folds]
    return {
        "per_fold": per_fold,
        "mean_std": fold_mean_std(per_fold, scoring.names),
        "pooled": scoring.compute(*pooled, **metric_kwargs),
    }

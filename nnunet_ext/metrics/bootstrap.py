"""Percentile bootstrap confidence intervals over cases.

Cases are resampled with replacement, the same resampled cases for every input array (paired), and
the metric is recomputed on each resample. SciPy's :func:`scipy.stats.bootstrap` is not used because
it cannot skip resamples on which the metric is undefined: with a small test set, some resamples hold
one class only, where AUROC does not exist. Here such resamples are left out and counted.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning

from nnunet_ext.metrics._common import undefined
from nnunet_ext.metrics.aggregate import task_metrics

DEFAULT_N_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0


@dataclass(frozen=True)
class ConfidenceInterval:
    """A bootstrap percentile interval and how many resamples it rests on.

    Attributes
    ----------
    low, high : float
        Lower and upper bound; NaN if the metric was undefined on every resample.
    n_resamples : int
        Resamples drawn.
    n_undefined : int
        Resamples skipped because the metric was undefined (NaN) on them. A large share means the
        interval describes only the resamples where the metric exists (e.g. with both classes present).
    """

    low: float
    high: float
    n_resamples: int
    n_undefined: int


def _case_arrays(arrays: tuple[Any, ...]) -> tuple[list[np.ndarray], int]:
    """Turn each input into an array indexable by case (a list of dicts becomes an object array)."""
    if not arrays:
        raise ValueError("no data to resample")
    converted = [np.asarray(a) for a in arrays]
    lengths = {len(a) for a in converted}
    if len(lengths) != 1:
        raise ValueError(f"the inputs must have one entry per case, got lengths {sorted(lengths)}")
    n_cases = lengths.pop()
    if n_cases == 0:
        raise ValueError("no cases to resample")
    return converted, n_cases


def bootstrap_cis(
    metrics_fn: Callable[..., Mapping[str, float]],
    *arrays: Any,
    names: tuple[str, ...],
    n_resamples: int = DEFAULT_N_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> dict[str, ConfidenceInterval]:
    """Percentile bootstrap intervals for several metrics computed by one function, on shared resamples.

    Parameters
    ----------
    metrics_fn : callable
        ``metrics_fn(*resampled_arrays)`` returns a dict holding at least ``names``.
    *arrays : sequences of equal length
        Case-aligned inputs (e.g. ``y_true, y_prob``); resampled together.
    names : tuple of str
        The metrics of the dict to give intervals for.
    n_resamples : int, default=1000
        Number of bootstrap resamples.
    confidence : float, default=0.95
        Coverage of the interval; the bounds are the ``(1 - confidence) / 2`` and
        ``(1 + confidence) / 2`` quantiles of the metric over the resamples where it is defined.
    seed : int, default=0
        Seed of the random generator: the same seed gives the same intervals.

    Returns
    -------
    dict
        ``{name: ConfidenceInterval}``.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    data, n_cases = _case_arrays(arrays)
    rng = np.random.default_rng(seed)
    values = np.empty((n_resamples, len(names)))
    # Undefined metrics on single resamples are expected and counted below; one warning each would drown the log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for row in range(n_resamples):
            cases = rng.integers(0, n_cases, size=n_cases)
            metrics = metrics_fn(*(a[cases] for a in data))
            values[row] = [metrics[name] for name in names]

    quantiles = 100 * np.array([(1 - confidence) / 2, (1 + confidence) / 2])
    intervals = {}
    for column, name in enumerate(names):
        defined = values[~np.isnan(values[:, column]), column]
        if defined.size:
            low, high = np.percentile(defined, quantiles)
        else:
            low = high = undefined(f"confidence interval of {name}", "undefined on every resample")
        intervals[name] = ConfidenceInterval(float(low), float(high), n_resamples, n_resamples - defined.size)
    return intervals


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: Any,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of one scalar metric, e.g. ``bootstrap_ci(roc_auc_score, y, p)``.

    ``metric_fn(*resampled_arrays)`` returns a float, NaN where undefined. See :func:`bootstrap_cis`
    for the parameters.
    """
    (interval,) = bootstrap_cis(
        lambda *resampled: {"metric": metric_fn(*resampled)},
        *arrays,
        names=("metric",),
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
    ).values()
    return interval


def metrics_with_ci(
    task_type: str,
    *arrays: Any,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
    **metric_kwargs: Any,
) -> dict[str, dict[str, float | int]]:
    """Every metric of a task with its bootstrap confidence interval.

    Parameters
    ----------
    task_type : {"classification", "regression", "segmentation"}
        Selects the metrics (:data:`~nnunet_ext.metrics.aggregate.TASK_METRICS`).
    *arrays : sequences of equal length
        ``y_true, y_prob`` (classification), ``y_true, y_pred`` (regression) or the list of per-case
        :func:`segmentation_metrics` dicts (segmentation: the interval is that of the mean over cases).
    n_resamples, confidence, seed
        See :func:`bootstrap_cis`.
    **metric_kwargs
        Passed to the metrics function, e.g. ``threshold=`` for classification.

    Returns
    -------
    dict
        ``{name: {"value", "ci_low", "ci_high", "n_undefined_resamples"}}`` for each metric of the task,
        ``value`` being the metric on all cases.
    """
    scoring = task_metrics(task_type)

    def compute(*data: Any) -> Mapping[str, float]:
        return scoring.compute(*data, **metric_kwargs)

    point = compute(*arrays)
    intervals = bootstrap_cis(
        compute, *arrays, names=scoring.names, n_resamples=n_resamples, confidence=confidence, seed=seed
    )
    return {
        name: {
            "value": point[name],
            "ci_low": interval.low,
            "ci_high": interval.high,
            "n_undefined_resamples": interval.n_undefined,
        }
        for name, interval in intervals.items()
    }

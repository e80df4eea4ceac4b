"""Binary classification metrics from predicted probabilities of the positive class (Task 1: infarct).

A case is called positive when its probability is at least the threshold (``y_prob >= threshold``),
the convention of :func:`sklearn.metrics.roc_curve`, so that a threshold read off the ROC curve
reproduces the operating point it was read from.

The counts, the AUROC and the average precision are computed here with NumPy, to scikit-learn's definitions (the
tests check them against :func:`sklearn.metrics.confusion_matrix`, :func:`~sklearn.metrics.roc_auc_score` and
:func:`~sklearn.metrics.average_precision_score`): the bootstrap calls :func:`classification_metrics` once per
resample, thousands of times per report, and scikit-learn's input validation took 17 ms of each call, over a
minute per report.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata

from nnunet_ext.metrics._common import paired_vectors, undefined

#: The threshold used when none was tuned: the one that maximises accuracy for calibrated probabilities.
DEFAULT_THRESHOLD = 0.5

#: Keys of :func:`classification_metrics` that are performance metrics (and get confidence intervals);
#: the remaining keys describe the data (case counts, confusion-matrix cells, the threshold).
CLASSIFICATION_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "precision",
    "sensitivity",
    "specificity",
    "f1",
    "auroc",
    "average_precision",
)


def _binary_inputs(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels in {0, 1} and probabilities in [0, 1]; return them as (int, float) arrays."""
    labels, probs = paired_vectors(y_true, y_prob, ("y_true", "y_prob"))
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError(f"y_true must hold 0 and 1 only, got values {np.unique(labels).tolist()}")
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError(f"y_prob must lie in [0, 1], got range [{probs.min()}, {probs.max()}]")
    return labels.astype(int), probs


def _ratio(metric: str, numerator: int, denominator: int, reason: str) -> float:
    """``numerator / denominator``, or NaN (with ``reason``) when the denominator is zero."""
    return numerator / denominator if denominator else undefined(metric, reason)


def confusion_counts(y_true: ArrayLike, y_prob: ArrayLike, threshold: float = DEFAULT_THRESHOLD) -> dict[str, int]:
    """Count true negatives, false positives, false negatives and true positives at a threshold.

    Parameters
    ----------
    y_true : array-like of shape (n_cases,)
        Reference labels, 0 (negative) or 1 (positive).
    y_prob : array-like of shape (n_cases,)
        Predicted probability of the positive class, in [0, 1].
    threshold : float, default=0.5
        A case is predicted positive when ``y_prob >= threshold``.

    Returns
    -------
    dict
        ``{"tn", "fp", "fn", "tp"}`` as ints. In the matrix layout of
        :func:`sklearn.metrics.confusion_matrix` this is ``[[tn, fp], [fn, tp]]``
        (rows: reference, columns: prediction).
    """
    return _confusion_counts(*_binary_inputs(y_true, y_prob), threshold)


def _confusion_counts(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, int]:
    """:func:`confusion_counts` on validated inputs."""
    predicted = probs >= threshold
    positive = labels == 1
    tp = int(np.count_nonzero(predicted & positive))
    fp = int(np.count_nonzero(predicted & ~positive))
    fn = int(np.count_nonzero(positive)) - tp
    return {"tn": labels.size - tp - fp - fn, "fp": fp, "fn": fn, "tp": tp}


def _auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Area under the ROC curve of validated inputs holding both classes: the Mann-Whitney statistic, i.e. the
    probability that a random positive case scores higher than a random negative one, ties counting one half (the
    trapezoidal area of :func:`sklearn.metrics.roc_auc_score`)."""
    ranks = rankdata(probs)  # tied scores share their mean rank: the one-half of a tie
    n_positive = int(labels.sum())
    n_negative = labels.size - n_positive
    return float((ranks[labels == 1].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def _operating_points(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, true positives, false positives) of calling ``probs >= threshold`` positive, one point per
    distinct probability, from the highest threshold down (the points of :func:`sklearn.metrics.roc_curve`)."""
    order = np.argsort(-probs, kind="stable")
    sorted_probs, sorted_labels = probs[order], labels[order]
    # the last case of each run of equal scores: one operating point per distinct threshold
    last = np.r_[np.flatnonzero(np.diff(sorted_probs)), sorted_probs.size - 1]
    true_positives = np.cumsum(sorted_labels)[last]
    return sorted_probs[last], true_positives, last + 1 - true_positives


def _average_precision(labels: np.ndarray, probs: np.ndarray) -> float:
    """Average precision of validated inputs with positive cases: sum over the distinct thresholds, from the
    highest, of (R_k - R_(k-1)) P_k, precision P and recall R of calling ``probs >= threshold`` positive (the step
    function of :func:`sklearn.metrics.average_precision_score`, no interpolation)."""
    _, true_positives, false_positives = _operating_points(labels, probs)
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def youden_threshold(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Threshold that maximises Youden's J = sensitivity + specificity - 1 on the ROC curve.

    Tune it on validation (out-of-fold) predictions and apply it unchanged to the test set; tuning on
    the test set would make the test metrics optimistic.

    Parameters
    ----------
    y_true : array-like of shape (n_cases,)
        Reference labels, 0 or 1; both classes must be present.
    y_prob : array-like of shape (n_cases,)
        Predicted probability of the positive class.

    Returns
    -------
    float
        One of the predicted probabilities: calling ``y_prob >= threshold`` positive reaches the
        maximal J. Of several thresholds with exactly the same J (compared as integers, not floats), the
        highest (the most specific) is returned.

    Raises
    ------
    ValueError
        If ``y_true`` holds one class only: sensitivity or specificity, hence J, is then undefined.
        Choosing a threshold anyway (0.5, say) is the caller's decision, not a silent default here.
    """
    labels, probs = _binary_inputs(y_true, y_prob)
    if np.unique(labels).size < 2:
        raise ValueError("Youden's threshold needs both classes in y_true; only one is present")
    thresholds, true_positives, false_positives = _operating_points(labels, probs)
    n_positive = int(true_positives[-1])
    n_negative = int(false_positives[-1])
    # J = TP/P - FP/N compared exactly, as the integer J * P * N: in floating point, thresholds of equal J differ
    # by rounding noise and the tie rule would pick among them at random. (Every threshold is an attainable
    # probability: "no case positive" has J = 0, which the lowest threshold, all positive, also reaches.)
    scaled_j = true_positives.astype(np.int64) * n_negative - false_positives.astype(np.int64) * n_positive
    return float(thresholds[np.argmax(scaled_j)])  # argmax: the first maximum, the highest threshold


def classification_metrics(
    y_true: ArrayLike, y_prob: ArrayLike, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, float | int]:
    """All binary classification metrics of one set of predictions.

    Threshold-dependent metrics, with TP, FP, TN, FN counted at ``y_prob >= threshold``:

    - accuracy = (TP + TN) / n
    - sensitivity (recall, true-positive rate) = TP / (TP + FN); undefined without positive cases
    - specificity (true-negative rate) = TN / (TN + FP); undefined without negative cases
    - precision (positive predictive value) = TP / (TP + FP); undefined when no case is called positive
    - balanced_accuracy = (sensitivity + specificity) / 2; undefined when either is
    - f1 = 2 TP / (2 TP + FP + FN); undefined when there are no positives in labels or predictions

    Threshold-free metrics, from the probabilities:

    - auroc: area under the ROC curve, as :func:`sklearn.metrics.roc_auc_score`; undefined with one class
    - average_precision: area under the precision-recall curve as a step function, as
      :func:`sklearn.metrics.average_precision_score`; undefined without positive cases

    Undefined metrics are NaN, with the reason given as an
    :class:`~sklearn.exceptions.UndefinedMetricWarning`.

    Parameters
    ----------
    y_true : array-like of shape (n_cases,)
        Reference labels, 0 (negative) or 1 (positive).
    y_prob : array-like of shape (n_cases,)
        Predicted probability of the positive class, in [0, 1].
    threshold : float, default=0.5
        Decision threshold; e.g. :func:`youden_threshold` of the validation folds.

    Returns
    -------
    dict
        The metrics of :data:`CLASSIFICATION_METRICS` (floats in [0, 1] or NaN) and the descriptive
        entries ``threshold``, ``n``, ``n_positive`` and the confusion-matrix cells ``tn``, ``fp``,
        ``fn``, ``tp`` (ints).
    """
    labels, probs = _binary_inputs(y_true, y_prob)
    counts = _confusion_counts(labels, probs, threshold)
    tn, fp, fn, tp = counts["tn"], counts["fp"], counts["fn"], counts["tp"]
    n_positive = tp + fn
    n_negative = tn + fp

    sensitivity = _ratio("sensitivity", tp, n_positive, "no positive cases in y_true")
    specificity = _ratio("specificity", tn, n_negative, "no negative cases in y_true")
    both_classes = n_positive > 0 and n_negative > 0
    return {
        "threshold": float(threshold),
        "n": labels.size,
        "n_positive": n_positive,
        **counts,
        "accuracy": (tp + tn) / labels.size,
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "precision": _ratio("precision", tp, tp + fp, f"no case has y_prob >= {threshold}"),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "f1": _ratio("f1", 2 * tp, 2 * tp + fp + fn, "no positive cases in y_true or in the predictions"),
        "auroc": _auroc(labels, probs) if both_classes else undefined("auroc", "y_true holds one class only"),
        "average_precision": (
            _average_precision(labels, probs)
            if n_positive
            else undefined("average_precision", "no positive cases in y_true")
        ),
    }

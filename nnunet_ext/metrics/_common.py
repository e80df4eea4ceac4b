"""Helpers shared by the evaluation modules: input checks and the convention for undefined metrics."""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike
from sklearn.exceptions import UndefinedMetricWarning


def undefined(metric: str, reason: str) -> float:
    """Return NaN for a metric that is undefined on this input, and say why.

    A metric that cannot be computed (AUROC with one class, Pearson r of a constant) is NaN rather
    than an exception, so that one degenerate fold or bootstrap resample does not abort an evaluation.
    The reason goes out as scikit-learn's :class:`~sklearn.exceptions.UndefinedMetricWarning`, which
    callers can record with :func:`warnings.catch_warnings` and write next to the value.

    Parameters
    ----------
    metric : str
        Name of the metric, as in the metrics dictionaries.
    reason : str
        Why it is undefined, in words.

    Returns
    -------
    float
        ``nan``.
    """
    warnings.warn(f"{metric} is undefined: {reason}; reported as NaN", UndefinedMetricWarning, stacklevel=3)
    return float("nan")


def paired_vectors(a: ArrayLike, b: ArrayLike, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Check that two per-case inputs are non-empty, finite, 1-D and of equal length; return them as floats.

    Raises
    ------
    ValueError
        If either input is empty, not 1-D, holds a non-finite value, or the lengths differ.
    """
    arrays = []
    for values, name in zip((a, b), names):
        arr = np.asarray(values, dtype=float)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} holds NaN or infinite values")
        arrays.append(arr)
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(f"{names[0]} and {names[1]} differ in length: {arrays[0].size} != {arrays[1].size}")
    return arrays[0], arrays[1]


def binary_mask(mask: ArrayLike, name: str) -> np.ndarray:
    """Return ``mask`` as bool after checking that it holds 0 and 1 only (a label map is refused)."""
    arr = np.asarray(mask)
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must be a binary mask (0/1), got values {np.unique(arr)[:10].tolist()}")
        arr = arr.astype(bool)
    return arr

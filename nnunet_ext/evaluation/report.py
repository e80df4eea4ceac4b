"""Turning metrics into JSON for machines and Markdown tables for people."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

#: Row labels of the Markdown tables, with units where the metric has one. A metric missing here
#: is shown under its key.
METRIC_LABELS = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "precision": "Precision (PPV)",
    "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity",
    "f1": "F1",
    "auroc": "AUROC",
    "average_precision": "Average precision",
    "dice": "Dice",
    "iou": "IoU",
    "hd95": "HD95 (mm)",
    "assd": "ASSD (mm)",
    "nsd": "NSD",
    "mae": "MAE",
    "rmse": "RMSE",
    "r2": "R²",
    "pearson_r": "Pearson r",
    "spearman_rho": "Spearman ρ",
    "mean_error": "Mean error (bias)",
}

#: How an undefined (NaN) value appears in a table.
UNDEFINED_TEXT = "undefined"


def json_safe(obj: Any) -> Any:
    """Convert metrics to plain JSON types: NaN and infinities become None (``null``), numpy values Python ones.

    ``json.dumps`` would write ``NaN``, which is not JSON and which many readers refuse.

    Parameters
    ----------
    obj : Any
        Nested dicts, lists and tuples of numbers, strings, booleans, None and numpy scalars or arrays.

    Returns
    -------
    Any
        The same structure with dicts, lists, str, int, float (finite), bool and None only.
    """
    if isinstance(obj, Mapping):
        return {str(key): json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [json_safe(value) for value in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _format_value(value: float | None, digits: int) -> str:
    """``value`` to ``digits`` decimals, or :data:`UNDEFINED_TEXT` for NaN (None once through JSON)."""
    return UNDEFINED_TEXT if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _undefined_note(label: str, undefined_on: list[tuple[str, int]], n_models: int) -> str:
    """One line per metric on the bootstrap resamples where it was undefined, however many models share it."""
    counts = {n for _, n in undefined_on}
    if len(undefined_on) == n_models and len(counts) == 1:
        where = f"on {counts.pop()} bootstrap resamples for every model"
    else:
        where = "on " + ", ".join(f"{n} ({model})" for model, n in undefined_on) + " bootstrap resamples"
    return f"{label}: undefined {where}, which the intervals leave out."


def format_metrics_table(
    results: Mapping[str, Mapping[str, Mapping[str, float]]], confidence: float = 0.95, digits: int = 3
) -> str:
    """A Markdown table of metrics with confidence intervals, one row per metric and one column per model.

    A caption line states the coverage; each cell reads ``value [low, high]``; undefined values read
    ``undefined``. Below the table, one note per metric whose intervals skipped resamples on which it was
    undefined, naming the models.

    Parameters
    ----------
    results : dict
        ``{model_name: metrics_with_ci(...)}``, e.g. ``{"fold 0": ..., "ensemble": ...}``; the rows are
        the metrics of the first model.
    confidence : float, default=0.95
        Coverage the intervals were computed with, for the header.
    digits : int, default=3
        Decimal places.

    Returns
    -------
    str
        Markdown text ending with a newline.
    """
    if not results:
        raise ValueError("no results to tabulate")
    models = list(results)
    names = list(results[models[0]])
    lines = [f"Value [{confidence:.0%} bootstrap confidence interval] on all cases.", "", *_table_head(models)]
    notes = []
    for name in names:
        cells = []
        undefined_on = []
        for model in models:
            entry = results[model][name]
            value, low, high = (_format_value(entry[key], digits) for key in ("value", "ci_low", "ci_high"))
            cells.append(f"{value} [{low}, {high}]")
            if entry.get("n_undefined_resamples"):
                undefined_on.append((model, entry["n_undefined_resamples"]))
        lines.append(f"| {METRIC_LABELS.get(name, name)} | {' | '.join(cells)} |")
        if undefined_on:
            notes.append(_undefined_note(METRIC_LABELS.get(name, name), undefined_on, len(models)))
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _table_head(models: list[str]) -> list[str]:
    """The header row and separator of a Markdown table with one column per model after the metric's."""
    return [f"| Metric | {' | '.join(models)} |", "|---" * (len(models) + 1) + "|"]


def format_point_table(results: Mapping[str, Mapping[str, float]], labels: Mapping[str, str], digits: int = 3) -> str:
    """A Markdown table of point estimates without intervals, one row per metric and one column per model.

    Parameters
    ----------
    results : dict
        ``{model_name: {metric: value}}``; the rows are the metrics of the first model.
    labels : dict
        Row label of each metric (a metric missing here is shown under its key).
    digits : int, default=3
        Decimal places; undefined values read :data:`UNDEFINED_TEXT`.

    Returns
    -------
    str
        Markdown text ending with a newline.
    """
    if not results:
        raise ValueError("no results to tabulate")
    models = list(results)
    lines = _table_head(models)
    for name in results[models[0]]:
        cells = [_format_value(results[model][name], digits) for model in models]
        lines.append(f"| {labels.get(name, name)} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"

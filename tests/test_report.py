"""JSON conversion of metrics and the Markdown table for report.md."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnunet_ext.evaluation.report import format_metrics_table, json_safe


def test_json_safe_turns_non_finite_into_null_and_numpy_into_python():
    obj = {"auroc": np.float64("nan"), "n": np.int64(3), "cm": np.array([[1, 2], [3, 4]]), "x": (float("inf"), 0.5)}
    text = json.dumps(json_safe(obj), allow_nan=False)
    assert json.loads(text) == {"auroc": None, "n": 3, "cm": [[1, 2], [3, 4]], "x": [None, 0.5]}


def test_table_cells_read_value_and_interval():
    results = {
        "fold 0": {
            "auroc": {"value": 0.91234, "ci_low": 0.85, "ci_high": 0.96, "n_undefined_resamples": 12},
            "hd95": {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")},
        },
        "ensemble": {
            "auroc": {"value": 0.95, "ci_low": 0.9, "ci_high": 0.99, "n_undefined_resamples": 0},
            "hd95": {"value": 2.5, "ci_low": None, "ci_high": 3.0},
        },
    }
    table = format_metrics_table(results, confidence=0.9, digits=2)
    lines = table.splitlines()
    assert "90% bootstrap confidence interval" in lines[0]
    assert lines[2] == "| Metric | fold 0 | ensemble |"
    assert "| AUROC | 0.91 [0.85, 0.96] | 0.95 [0.90, 0.99] |" in lines
    assert "| HD95 (mm) | undefined [undefined, undefined] | 2.50 [undefined, 3.00] |" in lines
    assert "- AUROC: undefined on 12 (fold 0) bootstrap resamples, which the intervals leave out." in lines
    assert table.endswith("\n")


def test_notes_repeated_by_every_model_collapse_into_one_line():
    undefined = {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n_undefined_resamples": 200}
    results = {model: {"hd95": undefined, "assd": undefined} for model in ("fold 0", "fold 1", "ensemble")}
    notes = [line for line in format_metrics_table(results).splitlines() if line.startswith("- ")]
    assert notes == ["- HD95 (mm): undefined on 200 bootstrap resamples for every model, which the intervals leave out.",
                     "- ASSD (mm): undefined on 200 bootstrap resamples for every model, which the intervals leave out."]


def test_empty_table_is_refused():
    with pytest.raises(ValueError, match="no results"):
        format_metrics_table({})

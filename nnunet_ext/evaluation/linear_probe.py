"""``fomo_linear_probe``: what a frozen encoder knows, measured with a linear model on its embeddings.

Reads ``fomo_embed``'s output and fits, fold by fold on the dataset's own subject-grouped folds, ridge regression
(regression) or L2-regularised logistic regression (classification) on the standardised embeddings
(``utils/linear_models.py``); the penalty is chosen inside each training part, so no validation case ever chooses
it. The out-of-fold predictions are scored with the task metrics and bootstrap CIs. The report also gives how much
the embeddings vary between cases (:func:`feature_spread`): a head learns slowly from features that barely do.
Written: ``linear_probe.json``, ``linear_probe.md`` and ``predictions.csv``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION
from nnunet_ext.errors import FomoInputError, cli_entry
from nnunet_ext.evaluation.report import format_metrics_table, json_safe
from nnunet_ext.inference.embed import EMBEDDINGS_JSON
from nnunet_ext.metrics.aggregate import cross_validation_summary
from nnunet_ext.metrics.bootstrap import DEFAULT_N_RESAMPLES, DEFAULT_SEED, metrics_with_ci
from nnunet_ext.utils.arguments import int_at_least
from nnunet_ext.utils.files import atomic_write_csv, atomic_write_json, atomic_write_text, require_output_folder
from nnunet_ext.utils.linear_models import fit_linear_model, predict_linear_model


def fit_predict(task_type: str, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, seed: int) -> np.ndarray:
    """Predictions for ``x_val`` (P(class 1), or the value) of a linear model fitted on the training part."""
    return predict_linear_model(task_type, fit_linear_model(task_type, x_train, y_train, seed), x_val)


def feature_spread(embeddings: np.ndarray) -> dict[str, float]:
    """Medians over the features of ``embeddings`` [cases, features]: the standard deviation between cases and the
    absolute mean. A pooled feature of an instance-normalised encoder varies little between cases, and a head's
    weights must grow by the inverse of that spread before its output varies between cases at all."""
    return {"median_std_between_cases": float(np.median(embeddings.std(axis=0))),
            "median_abs_mean": float(np.median(np.abs(embeddings.mean(axis=0))))}


def read_embeddings(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``fomo_embed``'s index and every case's embedding, refusing an incomplete or inconsistent folder."""
    index_file = folder / EMBEDDINGS_JSON
    if not index_file.is_file():
        raise FomoInputError(f"no {EMBEDDINGS_JSON}: give the output folder of fomo_embed", folder)
    index = json.loads(index_file.read_text())
    embeddings = {}
    for row in index["cases"]:
        path = folder / f"{row['case']}.npy"
        if not path.is_file():
            raise FomoInputError(f"listed in {EMBEDDINGS_JSON} but missing", path)
        vector = np.load(path)
        if vector.ndim != 1 or vector.size != index["dimension"] or not np.all(np.isfinite(vector)):
            raise FomoInputError(f"not a finite 1-D embedding of length {index['dimension']}", path)
        embeddings[row["case"]] = vector
    return index, embeddings


def linear_probe(index: dict[str, Any], embeddings: dict[str, np.ndarray], seed: int = DEFAULT_SEED,
                 n_resamples: int = DEFAULT_N_RESAMPLES) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Out-of-fold predictions on every fold, their cross-validation summary and pooled metrics with CIs."""
    task_type, rows = index["task_type"], index["cases"]
    records, folds = [], []
    for fold in sorted({row["fold"] for row in rows}):
        train = [row for row in rows if row["fold"] != fold]
        val = [row for row in rows if row["fold"] == fold]
        predictions = fit_predict(task_type, np.stack([embeddings[r["case"]] for r in train]),
                                  np.array([r["target"] for r in train], dtype=float),
                                  np.stack([embeddings[r["case"]] for r in val]), seed)
        folds.append((np.array([r["target"] for r in val], dtype=float), predictions))
        records += [{"case": r["case"], "subject": r["subject"], "fold": fold, "target": r["target"],
                     "prediction": float(p)} for r, p in zip(val, predictions)]
    y_true = np.array([r["target"] for r in records], dtype=float)
    y_pred = np.array([r["prediction"] for r in records])
    summary = {"task_type": task_type, "encoder": {k: v for k, v in index.items() if k != "cases"},
               "n_cases": len(records), "n_folds": len(folds),
               "model": "logistic regression (L2)" if task_type == CLASSIFICATION else "ridge regression",
               "cross_validation": cross_validation_summary(task_type, folds),
               "pooled_with_ci": metrics_with_ci(task_type, y_true, y_pred, n_resamples=n_resamples, seed=seed),
               "feature_spread": feature_spread(np.stack([embeddings[r["case"]] for r in rows]))}
    return summary, records


def markdown_report(summary: dict[str, Any]) -> str:
    encoder = summary["encoder"]
    return "\n".join([
        "# Linear probe", "",
        f"- encoder: {encoder['encoder']} ({encoder['starting_filters']} starting filters), levels "
        f"{encoder['pool_levels']} pooled by {encoder['pooling']}: embeddings of length {encoder['dimension']}",
        f"- {summary['model']} on {summary['n_cases']} cases, {summary['n_folds']} subject-grouped folds "
        "(pooled out-of-fold predictions, bootstrap 95% CIs)",
        f"- spread of the embeddings between cases: median standard deviation "
        f"{summary['feature_spread']['median_std_between_cases']:.3g} (median absolute mean "
        f"{summary['feature_spread']['median_abs_mean']:.3g})", "",
        format_metrics_table({"linear probe": summary["pooled_with_ci"]})])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fomo_linear_probe", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-e", "--embeddings", type=Path, required=True, help="output folder of fomo_embed")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the probe's report")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the inner folds and the bootstrap")
    parser.add_argument("--n-bootstrap", type=int_at_least(1), default=DEFAULT_N_RESAMPLES,
                        help="bootstrap resamples of the confidence intervals")
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``fomo_linear_probe``."""
    args = _parser().parse_args(argv)
    index, embeddings = read_embeddings(args.embeddings)
    summary, records = linear_probe(index, embeddings, args.seed, args.n_bootstrap)
    out = require_output_folder(args.output)
    atomic_write_json(out / "linear_probe.json", json_safe(summary))
    atomic_write_text(out / "linear_probe.md", markdown_report(summary))
    atomic_write_csv(out / "predictions.csv", records)
    print(markdown_report(summary))
    return 0

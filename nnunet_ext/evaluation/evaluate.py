"""``fomo_evaluate``: test-set evaluation of every fold's model and of the fold ensemble, with a report.

The test set is the one ``fomo_convert --test-fraction`` held out: ``imagesTs`` with its references (dataset.json
``fomo.test_targets`` for classification and regression, ``labelsTs`` for segmentation). Either the trained model
(``-tr``/``-p``/``-c``/``-f``) predicts it, each fold alone and all folds as an ensemble, through ``fomo_predict``'s
code, or existing predictions are given (``--predictions NAME=PATH``). Written to the output folder:

- ``summary.json``: every metric with its bootstrap confidence interval, per model (machines);
- ``per_case.csv`` / ``per_case.json``: one row per case and model;
- ``report.md`` with the figures in ``figures/`` embedded (people);
- ``predictions/``: what the model predicted, when it did.

Classification is scored at the threshold 0.5 and at the Youden-optimal threshold of the model's pooled validation
folds (never tuned on the test set), which needs the trained model (``-tr``).

A model with a stored calibration (``calibration.json``, fitted on the validation folds by
``fomo_find_best_configuration``) is evaluated as ``fomo_predict`` predicts: calibrated; the uncalibrated ensemble is
scored beside it (``ensemble, uncalibrated``; ``predictions/predictions_uncalibrated.csv``), and a calibration section
compares the two: reliability diagram and expected calibration error (classification), or the error's slope against
the true age (regression). Existing predictions get that section when two of them are named ``ensemble`` and
``ensemble, uncalibrated``.

Every report also scores trivial references on the same test cases, the bar a model must clear: a constant score
(the training prevalence; AUROC 0.5), an all-background mask and the whole brain as the mask, the training cases'
mean age. ``summary.json["headline"]`` holds the task's headline metric of the ensemble (or of the one model) with
its interval, the references' values and whether the model beat each.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.paths import nnUNet_raw
from sklearn.exceptions import UndefinedMetricWarning
from nnunetv2.utilities.file_path_utilities import maybe_convert_to_dataset_name
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION, FOMO_KEY, REGRESSION, SEGMENTATION
from nnunet_ext.errors import FomoInputError, cli_entry
from nnunet_ext.metrics._common import binary_mask
from nnunet_ext.metrics.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_N_RESAMPLES, DEFAULT_SEED, metrics_with_ci
from nnunet_ext.metrics.calibration import DEFAULT_N_BINS, age_bias, expected_calibration_error
from nnunet_ext.metrics.classification import DEFAULT_THRESHOLD, confusion_counts, youden_threshold
from nnunet_ext.evaluation.model_selection import read_out_of_fold
from nnunet_ext.evaluation.plots import (
    plot_bland_altman,
    plot_confusion_matrix,
    plot_dice_per_case,
    plot_error_against_age,
    plot_predicted_vs_true,
    plot_reliability_diagram,
    plot_roc_curves,
    plot_segmentation_overlay,
    plot_training_curves,
)
from nnunet_ext.evaluation.report import format_metrics_table, format_point_table, json_safe
from nnunet_ext.metrics.segmentation import DEFAULT_NSD_TOLERANCE_MM, load_mask, segmentation_metrics
from nnunet_ext.inference.calibration import NO_CALIBRATION, Calibration, read_calibration
from nnunet_ext.inference.inputs import discover_cases
from nnunet_ext.inference.predict import (
    CASE_COLUMN,
    ENSEMBLE_COLUMN,
    FoldEnsemble,
    PREDICTIONS_JSON,
    add_device_argument,
    case_level_records,
    fold_column,
    parse_folds,
    predict_cases,
    read_prediction_records,
    require_nnunet_ext_trainers,
    write_records,
)
from nnunet_ext.inference.runtime import resolve_device
from nnunet_ext.trainers.base import NNUNET_EMA_DICE
from nnunet_ext.utils.arguments import fold, int_at_least, positive_float
from nnunet_ext.utils.files import atomic_write_json, atomic_write_text, require_output_folder, staged_directory
from nnunet_ext.utils.nnunet_paths import (
    DEFAULT_CHECKPOINT,
    DEFAULT_CONFIGURATION,
    DEFAULT_FOLDS,
    DEFAULT_PLANS,
    trained_model_folder,
)

log = logging.getLogger(__name__)

REPORT_MD = "report.md"
SUMMARY_JSON = "summary.json"
PER_CASE_STEM = "per_case"
FIGURES_DIR = "figures"
PREDICTIONS_DIR = "predictions"
#: Name of the fold ensemble among the evaluated models; folds are ``fold <X>``.
ENSEMBLE = "ensemble"
#: The fold ensemble before calibration, evaluated beside it when the model has a calibration; and its predictions.
UNCALIBRATED = "ensemble, uncalibrated"
UNCALIBRATED_STEM = "predictions_uncalibrated"
#: Segmentation overlays drawn (the highlighted model's worst cases by Dice: where a reader should look first).
MAX_OVERLAYS = 4
#: Checkpoint whose training log (nnU-Net's logger, saved in every checkpoint) gives the training curves.
TRAINING_LOG_CHECKPOINT = "checkpoint_final.pth"
#: nnU-Net's logger keys of the per-epoch losses.
TRAIN_LOSS_KEY, VAL_LOSS_KEY = "train_losses", "val_losses"
#: Image channel drawn under the segmentation contours.
OVERLAY_CHANNEL = 0

#: The metric that ranks a model of each task (the challenge's first metric of the task), and its direction.
HEADLINE_METRICS = {CLASSIFICATION: ("auroc", True), SEGMENTATION: ("dice", True), REGRESSION: ("mae", False)}
#: Names of the trivial references.
CONSTANT_SCORE, ALL_BACKGROUND, WHOLE_BRAIN, TRAINING_MEAN = (
    "constant score", "all background", "whole brain", "training mean")

#: Rows of the calibration section's table.
CALIBRATION_LABELS = {"ece": "Expected calibration error", "mae": "MAE (years)",
                      "slope": "Slope of the error against true age (years per year)",
                      "intercept": "Intercept of that line (years)", "pearson_r": "Pearson r of error and true age",
                      "mean_error": "Mean error (years)"}

#: Case-level predictions of each model: model -> case -> predicted probability or value.
CaseLevelPredictions = Dict[str, Dict[str, float]]


@dataclass(frozen=True)
class TestSet:
    """The held-out cases of a converted dataset and their references."""

    dataset_name: str
    task_type: str
    dataset_json: Mapping
    images: Path
    labels: Path
    targets: Mapping[str, float]


@dataclass(frozen=True)
class MetricTable:
    """Metrics with confidence intervals of every model (``{model: metrics_with_ci(...)}``) under one title."""

    title: str
    models: Dict[str, dict]
    threshold: Optional[float] = None  # classification only


@dataclass
class Evaluation:
    """What the report shows: metric tables (the trivial references' apart), per-case rows, figures (caption,
    path) and notes."""

    tables: List[MetricTable] = field(default_factory=list)
    references: Optional[MetricTable] = None
    per_case: List[dict] = field(default_factory=list)
    figures: List[Tuple[str, Path]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    calibration: Optional[dict] = None


@dataclass(frozen=True)
class EvaluationSettings:
    """Bootstrap resamples and seed of the confidence intervals; NSD tolerance of the segmentation metrics."""

    n_resamples: int = DEFAULT_N_RESAMPLES
    seed: int = DEFAULT_SEED
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM


def load_test_set(dataset: str, labels: Optional[Path] = None) -> TestSet:
    """The test set of ``$nnUNet_raw/DatasetXXX_NAME`` (``labels`` overrides ``labelsTs`` for segmentation)."""
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset)
        raw = Path(nnUNet_raw.require(), dataset_name)
    except RuntimeError as e:  # nnU-Net: nnUNet_raw unset, or no dataset with that id
        raise FomoInputError(str(e)) from None
    if not (raw / "dataset.json").is_file():
        raise FomoInputError("no raw dataset here: the test set lives in nnUNet_raw", raw)
    dataset_json = json.loads((raw / "dataset.json").read_text())
    fomo = dataset_json.get(FOMO_KEY)
    if not isinstance(fomo, Mapping):
        raise FomoInputError(f"dataset.json has no '{FOMO_KEY}' section: convert the data with fomo_convert", raw)
    test = TestSet(dataset_name, fomo["task_type"], dataset_json, raw / "imagesTs", labels or raw / "labelsTs",
                   fomo.get("test_targets", {}))
    has_references = test.labels.is_dir() if test.task_type == SEGMENTATION else bool(test.targets)
    if not has_references:
        raise FomoInputError("no test set: convert with `fomo_convert --test-fraction F`", raw)
    return test


def case_level_models(records: Sequence[Mapping], folds: Sequence[Union[int, str]]) -> CaseLevelPredictions:
    """``fomo_predict`` records as ``{"fold X": ..., "ensemble": ...}``."""
    models = {f"fold {f}": {r[CASE_COLUMN]: float(r[fold_column(f)]) for r in records} for f in folds}
    models[ENSEMBLE] = {r[CASE_COLUMN]: float(r[ENSEMBLE_COLUMN]) for r in records}
    return models


def calibrated_records(calibration: Calibration, records: Sequence[Mapping], folds: Sequence[Union[int, str]]
                       ) -> List[dict]:
    """``fomo_predict`` records of uncalibrated fold values as ``fomo_predict`` writes them with ``calibration``:
    each fold's value calibrated, the ensemble their mean."""
    calibrated = []
    for record in records:
        values = calibration.apply([record[fold_column(f)] for f in folds])
        calibrated.append({CASE_COLUMN: record[CASE_COLUMN], ENSEMBLE_COLUMN: float(np.mean(values)),
                           **{fold_column(f): v for f, v in zip(folds, values)}})
    return calibrated


def predict_test_set(test: TestSet, model_folder: Path, folds: Sequence[Union[int, str]], checkpoint: str,
                     device: torch.device, use_mirroring: bool, output: Path) -> Union[CaseLevelPredictions,
                                                                                       Dict[str, Path]]:
    """Predict the test images with each fold and the fold ensemble; masks per model, or values per model."""
    cases = discover_cases(test.images, test.dataset_json)
    if test.task_type != SEGMENTATION:
        # one pass gives every fold's value beside the ensemble's
        ensemble = FoldEnsemble(model_folder, folds, checkpoint, device, use_mirroring)
        # the stored calibration (announced by the ensemble) is applied here, to keep the uncalibrated values too
        calibration, ensemble.calibration = ensemble.calibration, None
        require_output_folder(output)
        raw = case_level_records(ensemble, cases)
        if calibration is None:
            write_records(output, raw)
            return case_level_models(raw, folds)
        records = calibrated_records(calibration, raw, folds)
        write_records(output, records)
        write_records(output, raw, stem=UNCALIBRATED_STEM)
        return {**case_level_models(records, folds), UNCALIBRATED: case_level_models(raw, folds)[ENSEMBLE]}
    folders = {}
    for name, members in [*((f"fold {f}", [f]) for f in folds), (ENSEMBLE, list(folds))]:
        folders[name] = output / name.replace(" ", "_")
        predict_cases(FoldEnsemble(model_folder, members, checkpoint, device, use_mirroring), cases, folders[name])
    return folders


def paired_targets(targets: Mapping[str, float], predictions: Mapping[str, float], model: str
                   ) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """(cases, targets, predictions) in case order; every test case needs exactly one prediction."""
    if set(predictions) != set(targets):
        raise FomoInputError(f"{model}: predictions and test targets differ in cases: missing "
                             f"{sorted(set(targets) - set(predictions))}, unknown {sorted(set(predictions) - set(targets))}")
    cases = sorted(targets)
    return cases, np.array([targets[c] for c in cases]), np.array([predictions[c] for c in cases])


def case_rows(test: TestSet, predictions: CaseLevelPredictions) -> List[dict]:
    """Per-case rows ``case, model, target, prediction``."""
    rows = []
    for model, values in predictions.items():
        cases, y_true, y_pred = paired_targets(test.targets, values, model)
        rows += [{"case": c, "model": model, "target": t, "prediction": p} for c, t, p in zip(cases, y_true, y_pred)]
    return rows


def highlighted(models: Sequence[str]) -> str:
    """The model the single-model figures show: the ensemble when there is one, else the first."""
    return ENSEMBLE if ENSEMBLE in models else models[0]


def training_targets(test: TestSet) -> Optional[np.ndarray]:
    """The training cases' targets (dataset.json ``fomo.targets``), which the references use; None without them."""
    targets = test.dataset_json[FOMO_KEY].get("targets")
    return np.array(list(targets.values()), dtype=float) if targets else None


def constant_reference(test: TestSet, name: str, value: float, settings: EvaluationSettings, **kwargs) -> MetricTable:
    """A model that predicts ``value`` for every test case, scored like the real ones."""
    y_true = np.array([test.targets[c] for c in sorted(test.targets)], dtype=float)
    with warnings.catch_warnings():
        # correlations of a constant are undefined, and that is the point of the reference
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        metrics = metrics_with_ci(test.task_type, y_true, np.full_like(y_true, value),
                                  n_resamples=settings.n_resamples, seed=settings.seed, **kwargs)
    return MetricTable("trivial reference (no model)", {name: metrics}, kwargs.get("threshold"))


def evaluate_classification(test: TestSet, predictions: CaseLevelPredictions, youden: Optional[float],
                            figures: Path, settings: EvaluationSettings) -> Evaluation:
    """Metrics at 0.5 and (when known) at the validation folds' Youden threshold; ROC and confusion matrices."""
    result = Evaluation(per_case=case_rows(test, predictions))
    paired = {m: paired_targets(test.targets, v, m)[1:] for m, v in predictions.items()}
    thresholds = {f"threshold {DEFAULT_THRESHOLD}": DEFAULT_THRESHOLD}
    if youden is None:
        result.notes.append("No Youden threshold: it comes from the trained model's validation folds (pass -tr).")
    else:
        thresholds[f"Youden threshold of the pooled validation folds ({youden:.3f})"] = youden
    best = highlighted(list(predictions))
    for title, threshold in thresholds.items():
        result.tables.append(MetricTable(title, {
            m: metrics_with_ci(CLASSIFICATION, y, p, n_resamples=settings.n_resamples, seed=settings.seed,
                               threshold=threshold) for m, (y, p) in paired.items()}, threshold))
        path = figures / f"confusion_matrix_{threshold:.3f}.png"
        plot_confusion_matrix(confusion_counts(*paired[best], threshold=threshold), path,
                              title=f"{best}, {title}")
        result.figures.append((f"Confusion matrix of the {best}, {title}", path))
    roc = plot_roc_curves(paired, figures / "roc.png", highlight=best, threshold=youden)
    result.figures.insert(0, ("ROC curves of each fold and the ensemble", roc))
    # the training prevalence (0.5 without training targets): a score that knows nothing about the case, AUROC 0.5
    training = training_targets(test)
    prevalence = DEFAULT_THRESHOLD if training is None else float(training.mean())
    result.references = constant_reference(test, CONSTANT_SCORE, prevalence, settings, threshold=DEFAULT_THRESHOLD)
    return result


def evaluate_regression(test: TestSet, predictions: CaseLevelPredictions, figures: Path,
                        settings: EvaluationSettings) -> Evaluation:
    """Regression metrics per model; predicted-vs-true scatter and Bland-Altman plot of the highlighted model."""
    result = Evaluation(per_case=case_rows(test, predictions))
    paired = {m: paired_targets(test.targets, v, m)[1:] for m, v in predictions.items()}
    result.tables.append(MetricTable("all test cases", {
        m: metrics_with_ci(REGRESSION, y, p, n_resamples=settings.n_resamples, seed=settings.seed)
        for m, (y, p) in paired.items()}))
    best = highlighted(list(predictions))
    result.figures += [
        (f"Predicted against true age, {best}", plot_predicted_vs_true(*paired[best], figures / "age_scatter.png")),
        (f"Bland-Altman plot, {best}", plot_bland_altman(*paired[best], figures / "bland_altman.png")),
    ]
    training = training_targets(test)
    if training is None:
        result.notes.append(f"No '{TRAINING_MEAN}' reference: dataset.json '{FOMO_KEY}' holds no training targets.")
    else:
        result.references = constant_reference(test, TRAINING_MEAN, float(training.mean()), settings)
    return result


def reference_mask_rows(test: TestSet, nsd_tolerance_mm: float) -> Dict[str, List[dict]]:
    """Per-case metrics of the trivial masks: all background, and the whole brain (channel 0's non-zero voxels,
    on the label's grid since fomo_convert puts every channel there)."""
    file_ending = test.dataset_json["file_ending"]
    rows: Dict[str, List[dict]] = {ALL_BACKGROUND: [], WHOLE_BRAIN: []}
    with warnings.catch_warnings():
        # distances to an empty mask are undefined: expected for the all-background reference
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for reference_path in sorted(test.labels.glob(f"*{file_ending}")):
            case = reference_path.name[: -len(file_ending)]
            reference, spacing = load_mask(reference_path)
            image_path = test.images / f"{case}_{OVERLAY_CHANNEL:04d}{file_ending}"
            brain = sitk.GetArrayFromImage(sitk.ReadImage(str(image_path))) != 0
            reference, brain = checked_masks(reference_path, reference, image_path, brain,
                                             f"image channel {OVERLAY_CHANNEL} (the whole-brain reference mask)")
            for name, mask in ((ALL_BACKGROUND, np.zeros_like(brain)), (WHOLE_BRAIN, brain)):
                rows[name].append({"case": case, "model": name,
                                   **segmentation_metrics(reference, mask, spacing, nsd_tolerance_mm)})
    return rows


def checked_masks(reference_path: Path, reference: np.ndarray, mask_path: Path, mask: np.ndarray, what: str
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """``reference`` and ``mask`` as boolean masks, refusing two shapes or values other than 0 and 1 with the file
    at fault named (the metrics' own ValueError names no file)."""
    if mask.shape != reference.shape:
        raise FomoInputError(f"{what} has shape {list(mask.shape)}, its reference {reference_path} "
                             f"{list(reference.shape)} (z, y, x): not on the reference's grid", mask_path)
    checked = []
    for array, path, name in ((reference, reference_path, "reference"), (mask, mask_path, what)):
        try:
            checked.append(binary_mask(array, name))
        except ValueError as e:
            raise FomoInputError(str(e), path) from None
    return checked[0], checked[1]


def segmentation_rows(test: TestSet, model: str, folder: Path, nsd_tolerance_mm: float) -> List[dict]:
    """Per-case segmentation metrics of one model's masks against the test references."""
    file_ending = test.dataset_json["file_ending"]
    references = sorted(test.labels.glob(f"*{file_ending}"))
    rows = []
    for reference_path in references:
        case = reference_path.name[: -len(file_ending)]
        prediction_path = folder / reference_path.name
        if not prediction_path.is_file():
            raise FomoInputError(f"{model}: no prediction for test case {case}", prediction_path)
        reference, spacing = load_mask(reference_path)
        reference, prediction = checked_masks(reference_path, reference, prediction_path,
                                              load_mask(prediction_path)[0], f"{model}'s predicted mask")
        rows.append({"case": case, "model": model,
                     **segmentation_metrics(reference, prediction, spacing, nsd_tolerance_mm)})
    return rows


def overlay_figures(test: TestSet, model: str, folder: Path, rows: Sequence[Mapping], figures: Path,
                    notes: List[str]) -> List[Tuple[str, Path]]:
    """Overlays of ``model``'s worst cases by Dice (image channel 0, reference and predicted contours)."""
    drawn = []
    file_ending = test.dataset_json["file_ending"]
    for row in sorted(rows, key=lambda r: r["dice"])[:MAX_OVERLAYS]:
        case = row["case"]
        image_path = test.images / f"{case}_{OVERLAY_CHANNEL:04d}{file_ending}"
        if not image_path.is_file():
            notes.append(f"No overlay of {case}: its image {image_path} does not exist.")
            continue
        reference, spacing = load_mask(test.labels / f"{case}{file_ending}")
        prediction, _ = load_mask(folder / f"{case}{file_ending}")
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(image_path)))
        path = plot_segmentation_overlay(image, reference, prediction, spacing, figures / f"overlay_{case}.png",
                                         title=f"{case}, {model} (Dice {row['dice']:.3f})")
        drawn.append((f"{case}: reference (solid) and {model} (dashed) contours", path))
    return drawn


def evaluate_segmentation(test: TestSet, predictions: Mapping[str, Path], figures: Path,
                          settings: EvaluationSettings) -> Evaluation:
    """Segmentation metrics per model (mean over cases), Dice per case, overlays of the highlighted model."""
    result = Evaluation()
    rows = {m: segmentation_rows(test, m, folder, settings.nsd_tolerance_mm) for m, folder in predictions.items()}
    result.per_case = [row for model_rows in rows.values() for row in model_rows]
    result.tables.append(MetricTable(f"mean over test cases (NSD tolerance {settings.nsd_tolerance_mm} mm)", {
        m: metrics_with_ci(SEGMENTATION, model_rows, n_resamples=settings.n_resamples, seed=settings.seed)
        for m, model_rows in rows.items()}))
    dice = plot_dice_per_case({m: [r["dice"] for r in model_rows] for m, model_rows in rows.items()},
                              figures / "dice_per_case.png")
    result.figures.append(("Dice per case, each fold and the ensemble", dice))
    best = highlighted(list(predictions))
    result.figures += overlay_figures(test, best, predictions[best], rows[best], figures, result.notes)
    result.references = MetricTable("trivial references (no model)", {
        name: metrics_with_ci(SEGMENTATION, model_rows, n_resamples=settings.n_resamples, seed=settings.seed)
        for name, model_rows in reference_mask_rows(test, settings.nsd_tolerance_mm).items()})
    return result


def validation_youden(model_folder: Path, folds: Sequence[Union[int, str]],
                      calibration: Optional[Calibration] = None) -> float:
    """The Youden-optimal threshold of all folds' validation predictions together (calibrated by ``calibration``,
    as the predictions it is applied to are)."""
    targets, probabilities = zip(*((t, p) for _, t, p in read_out_of_fold(model_folder, [str(f) for f in folds])
                                   .values()))
    if calibration is not None:
        probabilities = calibration.apply(probabilities)
    try:
        return youden_threshold(targets, probabilities)
    except ValueError as e:  # one class only in the validation folds
        raise FomoInputError(f"no Youden threshold from the validation folds: {e}", model_folder) from None


def calibration_section(test: TestSet, predictions: CaseLevelPredictions, calibration: Optional[Calibration],
                        figures: Path, drawn: List[Tuple[str, Path]]) -> dict:
    """The ensemble before and after calibration on the test set: expected calibration error and a reliability
    diagram (classification), or the error's dependence on the true age (regression); the figure goes to ``drawn``."""
    paired = {m: paired_targets(test.targets, predictions[m], m)[1:] for m in (UNCALIBRATED, ENSEMBLE)}
    if test.task_type == CLASSIFICATION:
        models = {m: {"ece": expected_calibration_error(*paired[m])} for m in paired}
        path = plot_reliability_diagram(paired, figures / "reliability_diagram.png")
        drawn.append((f"Reliability diagram of the ensemble before and after calibration ({DEFAULT_N_BINS} bins)",
                      path))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)  # undefined values are null, and said so
            models = {m: {"mae": float(np.mean(np.abs(y_pred - y_true))), **age_bias(y_true, y_pred)}
                      for m, (y_true, y_pred) in paired.items()}
        path = plot_error_against_age(paired, figures / "error_against_age.png")
        drawn.append(("Error against true age of the ensemble before and after the de-bias", path))
    fitted = None if calibration is None else {
        "description": calibration.describe(),
        **{k: v for k, v in calibration.record.items() if k != "fitted_on"},
        "fitted_on": {k: v for k, v in calibration.record.get("fitted_on", {}).items() if k != "cases"}}
    return {"fitted": fitted, "n_bins": DEFAULT_N_BINS if test.task_type == CLASSIFICATION else None,
            "models": models}


def training_curves(model_folder: Path, folds: Sequence[Union[int, str]], figures: Path, notes: List[str]
                    ) -> List[Tuple[str, Path]]:
    """Loss and selection-metric curves of each fold, from the training log saved in its final checkpoint."""
    drawn = []
    for fold in folds:
        path = model_folder / f"fold_{fold}" / TRAINING_LOG_CHECKPOINT
        if not path.is_file():
            notes.append(f"No training curves for fold {fold}: {path} does not exist (training unfinished?).")
            continue
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # nnU-Net checkpoints hold objects
        # nnU-Net's own trainers select by the EMA pseudo-Dice (higher is better); ours name their metric
        trainer_class = recursive_find_trainer_class_by_name(checkpoint["trainer_name"])
        metric = getattr(trainer_class, "selection_metric", NNUNET_EMA_DICE)
        history = checkpoint["logging"]
        series = [history[TRAIN_LOSS_KEY], history[VAL_LOSS_KEY], history[metric]]
        # an epoch interrupted by the end of training may have logged some values only
        epochs = min(len(s) for s in series)
        out = plot_training_curves(list(range(epochs)), *(s[:epochs] for s in series),
                                   figures / f"training_curves_fold_{fold}.png", metric_name=metric,
                                   higher_is_better=getattr(trainer_class, "selection_higher_is_better", True))
        drawn.append((f"Training curves, fold {fold} (losses and {metric})", out))
    return drawn


def headline(task_type: str, evaluation: Evaluation) -> dict:
    """The headline metric of the highlighted model (ensemble, else the only model) in the first table, with its
    interval, each reference's value, and whether the model beat it: ``"yes"`` when the whole interval is on the
    better side of the reference, ``"point estimate only"`` when the value is but the interval reaches it, else
    ``"no"``."""
    metric, higher_is_better = HEADLINE_METRICS[task_type]
    table = evaluation.tables[0]
    model = highlighted(list(table.models))
    entry = table.models[model][metric]
    sign = 1 if higher_is_better else -1
    references = {}
    for name, metrics in (evaluation.references.models.items() if evaluation.references else ()):
        reference = metrics[metric]["value"]
        if sign * (entry["ci_low" if higher_is_better else "ci_high"] - reference) > 0:
            beaten = "yes"
        elif sign * (entry["value"] - reference) > 0:
            beaten = "point estimate only"
        else:
            beaten = "no"
        references[name] = {"value": reference, "beaten": beaten}
    return {"metric": metric, "higher_is_better": higher_is_better, "model": model, "table": table.title,
            **{k: entry[k] for k in ("value", "ci_low", "ci_high")}, "references": references}


def calibration_markdown(section: Mapping) -> List[str]:
    """The calibration section of report.md: what was fitted, and the ensemble before and after on the test set."""
    fitted = section["fitted"]
    origin = (f"Fitted by fomo_find_best_configuration on the out-of-fold validation predictions, never on this test "
              f"set: {fitted['description']}." if fitted else
              "The predictions were given (--predictions): what calibrated them is not known here.")
    return ["## Calibration", "", origin, "", "On the test set (point estimates):", "",
            format_point_table(section["models"], CALIBRATION_LABELS)]


def report_markdown(test: TestSet, source: str, evaluation: Evaluation, output: Path,
                    settings: EvaluationSettings) -> str:
    """report.md: what was evaluated, the metric tables, the figures and the notes."""
    n_cases = len({row["case"] for row in evaluation.per_case})
    lines = [f"# Test-set evaluation: {test.dataset_name} ({test.task_type})", "",
             f"- Evaluated: {source}",
             f"- Test cases: {n_cases}",
             f"- Confidence intervals: percentile bootstrap over cases, {settings.n_resamples} resamples, "
             f"seed {settings.seed}",
             f"- Per-case results: [{PER_CASE_STEM}.csv]({PER_CASE_STEM}.csv); all numbers: [{SUMMARY_JSON}]"
             f"({SUMMARY_JSON})", "", "## Metrics", ""]
    for table in [*evaluation.tables, *([evaluation.references] if evaluation.references else [])]:
        lines += [f"### {table.title[0].upper()}{table.title[1:]}", "",
                  format_metrics_table(table.models, DEFAULT_CONFIDENCE)]
    lines += calibration_markdown(evaluation.calibration) if evaluation.calibration else []
    lines += ["## Figures", ""]
    for caption, path in evaluation.figures:
        lines += [f"**{caption}**", "", f"![{caption}]({path.relative_to(output).as_posix()})", ""]
    if evaluation.notes:
        lines += ["## Notes", "", *(f"- {note}" for note in evaluation.notes), ""]
    return "\n".join(lines)


def write_outputs(test: TestSet, source: str, evaluation: Evaluation, output: Path,
                  settings: EvaluationSettings) -> Path:
    """summary.json, per_case.csv/.json and report.md; returns the report."""
    write_records(output, json_safe(evaluation.per_case), stem=PER_CASE_STEM)
    atomic_write_json(output / SUMMARY_JSON, json_safe({
        "dataset": test.dataset_name,
        "task_type": test.task_type,
        "evaluated": source,
        "n_cases": len({row["case"] for row in evaluation.per_case}),
        "bootstrap": {"n_resamples": settings.n_resamples, "confidence": DEFAULT_CONFIDENCE, "seed": settings.seed},
        "headline": headline(test.task_type, evaluation),
        "tables": [{"title": t.title, "threshold": t.threshold, "metrics": t.models} for t in evaluation.tables],
        "references": None if evaluation.references is None else {
            "title": evaluation.references.title, "threshold": evaluation.references.threshold,
            "metrics": evaluation.references.models},
        "figures": [path.relative_to(output).as_posix() for _, path in evaluation.figures],
        "notes": evaluation.notes,
        "calibration": evaluation.calibration,
    }))
    report = output / REPORT_MD
    atomic_write_text(report, report_markdown(test, source, evaluation, output, settings))
    return report


def parse_named_paths(items: Sequence[str]) -> Dict[str, Path]:
    """``NAME=PATH`` arguments as an ordered dict."""
    named = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise FomoInputError(f"expected NAME=PATH, got {item!r}")
        named[name] = Path(path)
    return named


def given_predictions(test: TestSet, named: Mapping[str, Path]) -> Union[CaseLevelPredictions, Dict[str, Path]]:
    """Existing predictions: mask folders (segmentation) or ``fomo_predict`` outputs (their ensemble column)."""
    if test.task_type == SEGMENTATION:
        for path in named.values():
            if not path.is_dir():
                raise FomoInputError("expected a folder of predicted masks", path)
        return dict(named)
    models = {}
    for name, path in named.items():
        records = read_prediction_records(path)
        if test.task_type == CLASSIFICATION:
            for record in records:
                if not 0.0 <= record[ENSEMBLE_COLUMN] <= 1.0:
                    value = record[ENSEMBLE_COLUMN]
                    raise FomoInputError(f"case {record[CASE_COLUMN]}: {ENSEMBLE_COLUMN} {value!r} is no probability "
                                         "(outside [0, 1])",
                                         path / PREDICTIONS_JSON if path.is_dir() else path)
        models[name] = {r[CASE_COLUMN]: float(r[ENSEMBLE_COLUMN]) for r in records}
    return models


def evaluate(test: TestSet, output: Path, predictions: Union[CaseLevelPredictions, Dict[str, Path]], source: str,
             model_folder: Optional[Path], folds: Sequence[Union[int, str]], settings: EvaluationSettings) -> Path:
    """Score ``predictions`` on ``test``, draw the figures and write the report; returns report.md."""
    figures = output / FIGURES_DIR
    calibration = read_calibration(model_folder) if model_folder is not None else None
    if test.task_type == CLASSIFICATION:
        youden = validation_youden(model_folder, folds, calibration) if model_folder is not None else None
        evaluation = evaluate_classification(test, predictions, youden, figures, settings)
        if youden is not None and calibration is not None and calibration.method != NO_CALIBRATION:
            evaluation.notes.append("The Youden threshold is that of the calibrated validation probabilities: "
                                    "fomo_predict applies the model's calibration unless --no-calibration.")
    elif test.task_type == REGRESSION:
        evaluation = evaluate_regression(test, predictions, figures, settings)
    else:
        evaluation = evaluate_segmentation(test, predictions, figures, settings)
    if test.task_type != SEGMENTATION and {ENSEMBLE, UNCALIBRATED} <= set(predictions):
        evaluation.calibration = calibration_section(test, predictions, calibration, figures, evaluation.figures)
    if model_folder is not None:
        evaluation.figures += training_curves(model_folder, folds, figures, evaluation.notes)
    return write_outputs(test, source, evaluation, output, settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fomo_evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True,
                        help="dataset name or id in nnUNet_raw whose test set (imagesTs, references) is evaluated")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder for the report and results")
    parser.add_argument("-tr", "--trainer", default=None,
                        help="trained model to evaluate (its folds and their ensemble); for classification it also "
                             "gives the Youden threshold, and for every task the training curves")
    parser.add_argument("-p", "--plans", default=DEFAULT_PLANS, help="plans identifier of the trained model")
    parser.add_argument("-c", "--configuration", default=DEFAULT_CONFIGURATION, help="configuration of the trained model")
    parser.add_argument("-f", "--folds", nargs="+", type=fold, default=list(DEFAULT_FOLDS),
                        help="folds of the trained model")
    parser.add_argument("-chk", "--checkpoint", default=DEFAULT_CHECKPOINT, help="checkpoint file of each fold")
    add_device_argument(parser)
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    parser.add_argument("--predictions", nargs="+", default=None, metavar="NAME=PATH",
                        help="evaluate existing predictions instead of predicting: fomo_predict output folders "
                             "(classification, regression) or folders of masks (segmentation), each under a name")
    parser.add_argument("--labels", type=Path, default=None,
                        help="segmentation: folder of reference masks instead of the dataset's labelsTs")
    parser.add_argument("--n-bootstrap", type=int_at_least(1), default=DEFAULT_N_RESAMPLES,
                        help="bootstrap resamples per CI")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the bootstrap")
    parser.add_argument("--nsd-tolerance", type=positive_float, default=DEFAULT_NSD_TOLERANCE_MM,
                        help="tolerance of the normalised surface distance in mm")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.trainer is None and args.predictions is None:
        raise FomoInputError("nothing to evaluate: name a trained model (-tr) or existing predictions (--predictions)")
    # the device only matters, and is only checked, when the model predicts
    device = resolve_device(args.device) if args.predictions is None else None
    test = load_test_set(args.dataset, args.labels)
    settings = EvaluationSettings(args.n_bootstrap, args.seed, args.nsd_tolerance)
    folds = parse_folds(args.folds)
    model_folder = None
    if args.trainer is not None:
        require_nnunet_ext_trainers()
        model_folder = trained_model_folder(test.dataset_name, args.trainer, args.plans, args.configuration)
    if args.predictions is not None:
        named = parse_named_paths(args.predictions)
        predictions = given_predictions(test, named)
        source = ", ".join(f"{name} = `{path}`" for name, path in named.items())
    # everything is written into a staged folder beside args.output that reaches it only once the report is
    # complete: both must take new entries, which is known before the model predicts
    require_output_folder(args.output.parent)
    if args.output.is_dir():
        require_output_folder(args.output)
    with staged_directory(args.output) as staged:
        if args.predictions is None:
            predictions = predict_test_set(test, model_folder, folds, args.checkpoint, device,
                                           not args.disable_tta, staged / PREDICTIONS_DIR)
            source = (f"`{model_folder.name}`, folds {', '.join(map(str, folds))} and their ensemble, "
                      f"{args.checkpoint}, mirroring TTA {'off' if args.disable_tta else 'on'}")
        report = args.output / evaluate(test, staged, predictions, source, model_folder, folds, settings).name
    log.info("report: %s", report)
    return 0

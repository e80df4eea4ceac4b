"""Calibration end to end: fomo_find_best_configuration fits it on the out-of-fold predictions only and stores it with
each model, fomo_predict and the challenge container apply it to each fold (``--no-calibration`` switches it off),
the export carries it, and fomo_evaluate applies the stored one (never refitting on the test set) and reports the
ensemble before and after. On copies of the tiny trained models, which the other tests read unchanged."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_calibration_metrics import reference_temperature
from trained_models import FOLDS, NNUNET_DIRS, TrainedModel, use_model

from nnunet_ext.errors import EXIT_BAD_INPUT
from nnunet_ext.evaluation.evaluate import main as fomo_evaluate
from nnunet_ext.evaluation.model_selection import main as find_best_configuration
from nnunet_ext.inference.calibration import CALIBRATION_JSON
from nnunet_ext.inference.container import MODEL_DIR_ENV
from nnunet_ext.inference.container import main as challenge_predict
from nnunet_ext.inference.predict import main as fomo_predict
from nnunet_ext.inference import submission
from nnunet_ext.inference.submission import MANIFEST
from nnunet_ext.inference.submission import main as export_submission
from nnunet_ext.metrics.calibration import expected_calibration_error, temperature_scaled

DATASET = "Dataset992_Calibration"
PLANS_CONFIGURATION = "nnUNetPlans__3d_fullres"
#: Out-of-fold cases of the hand-made models: folds 0 and 1 are selected, fold 2's cases must stay out of the fit.
SELECTED_FOLDS, UNSELECTED_FOLD = ("0", "1"), "2"
#: A temperature no fit on these data gives, written by hand to see that evaluation applies, never refits, it.
HAND_TEMPERATURE = 3.0
#: Tolerance between two CPU forward passes of the same network on the same data.
FLOAT_TOLERANCE = 1e-5


def write_model(results: Path, trainer: str, task_type: str, folds: dict) -> Path:
    """A case-level model folder as the trainers leave it: ``folds = {fold: [(case, target, prediction), ...]}``."""
    folder = results / DATASET / f"{trainer}__{PLANS_CONFIGURATION}"
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"fomo": {"task_type": task_type}}))
    column = "probability" if task_type == "classification" else "predicted_age"
    for fold, cases in folds.items():
        (folder / f"fold_{fold}" / "validation").mkdir(parents=True)
        records = [{"case": c, "target": t, column: p, "fold": int(fold)} for c, t, p in cases]
        (folder / f"fold_{fold}" / "validation" / "predictions.json").write_text(json.dumps(records))
    return folder


def overconfident_folds() -> dict:
    """Overconfident out-of-fold probabilities in the selected folds; the unselected fold's cases are all wrong and
    sure of it, so that fitting on them too would give a much larger temperature."""
    rng = np.random.default_rng(0)
    folds = {}
    for fold in SELECTED_FOLDS:
        logits = rng.normal(0, 4, 20)
        labels = (rng.random(20) < 1 / (1 + np.exp(-logits / 3))).astype(int)
        folds[fold] = [(f"sub_{fold}{i:02d}_ses_1", int(t), float(1 / (1 + np.exp(-z))))
                       for i, (t, z) in enumerate(zip(labels, logits))]
    folds[UNSELECTED_FOLD] = [(f"sub_9{i:02d}_ses_1", i % 2, 0.02 if i % 2 else 0.98) for i in range(10)]
    return folds


def test_selection_fits_each_models_calibration_on_the_selected_out_of_fold_cases_only(nnunet_dirs) -> None:
    results = nnunet_dirs["nnUNet_results"]
    folds = overconfident_folds()
    folder = write_model(results, "Sure", "classification", folds)
    assert find_best_configuration(["-d", DATASET, "-tr", "Sure", "-f", *SELECTED_FOLDS]) == 0

    stored = json.loads((folder / CALIBRATION_JSON).read_text())
    selected = [case for fold in SELECTED_FOLDS for case in folds[fold]]
    assert stored["method"] == "temperature"
    assert stored["fitted_on"]["cases"] == sorted(c for c, _, _ in selected)
    labels, probabilities = (np.array(column) for column in list(zip(*selected))[1:])
    assert stored["parameters"]["temperature"] == pytest.approx(reference_temperature(labels, probabilities),
                                                                rel=1e-5)
    # the check has teeth: the unselected cases would move the temperature far
    leaked = [*selected, *folds[UNSELECTED_FOLD]]
    leaked_labels, leaked_probabilities = (np.array(column) for column in list(zip(*leaked))[1:])
    assert reference_temperature(leaked_labels, leaked_probabilities) > 1.5 * stored["parameters"]["temperature"]

    information = json.loads((results / DATASET / "inference_information.json").read_text())
    assert information["calibration"][folder.name]["parameters"] == stored["parameters"]
    assert "temperature" in (results / DATASET / "inference_instructions.txt").read_text()


def test_selection_fits_the_chosen_age_correction_on_every_candidate(nnunet_dirs) -> None:
    results = nnunet_dirs["nnUNet_results"]
    rng = np.random.default_rng(1)
    ages = rng.uniform(20, 80, 16)
    predicted = 0.5 * ages + 25 + rng.normal(0, 2, ages.size)  # regression to the mean
    folds = {fold: [(f"sub_{i}_ses_1", float(ages[i]), float(predicted[i])) for i in range(int(fold), 16, 2)]
             for fold in SELECTED_FOLDS}
    folders = [write_model(results, trainer, "regression", folds) for trainer in ("A", "B")]
    assert find_best_configuration(["-d", DATASET, "-tr", "A", "B", "-f", *SELECTED_FOLDS,
                                    "--age-correction", "cole"]) == 0

    alpha, beta = np.polyfit(ages, predicted, 1)
    for folder in folders:
        stored = json.loads((folder / CALIBRATION_JSON).read_text())
        assert (stored["method"], stored["fit"]) == ("linear", "cole")
        assert [stored["parameters"]["slope"], stored["parameters"]["intercept"]] == pytest.approx(
            [1 / alpha, -beta / alpha])
        assert stored["out_of_fold_in_sample"]["after"]["bias_slope"] == pytest.approx(0.0, abs=1e-9)


def test_a_refused_selection_stores_no_calibration(nnunet_dirs, capsys: pytest.CaptureFixture) -> None:
    results = nnunet_dirs["nnUNet_results"]
    folds = overconfident_folds()
    ready = write_model(results, "Ready", "classification", folds)
    unfinished = write_model(results, "Unfinished", "classification", folds)
    (unfinished / "fold_1" / "validation" / "predictions.json").unlink()
    with pytest.raises(SystemExit) as exit_info:
        find_best_configuration(["-d", DATASET, "-tr", "Ready", "Unfinished", "-f", *SELECTED_FOLDS])
    assert exit_info.value.code == EXIT_BAD_INPUT and "--val" in capsys.readouterr().err
    assert not (ready / CALIBRATION_JSON).exists()


def model_copy(model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TrainedModel:
    """A copy of a shared trained model (its raw data and results) that a test may store a calibration in."""
    copy = TrainedModel(tmp_path / "copy", model.task_type, model.dataset_name)
    for name in NNUNET_DIRS:
        (copy.root / name).mkdir(parents=True)
    for name in ("nnUNet_raw", "nnUNet_results"):
        shutil.copytree(model.root / name / model.dataset_name, copy.root / name / model.dataset_name)
    use_model(monkeypatch, copy)
    return copy


def predicted_records(model: TrainedModel, output: Path, *extra: str) -> list:
    assert fomo_predict(["-i", str(model.raw / "imagesTs"), "-o", str(output), "-d", model.dataset_id, "-tr",
                         model.trainer, "-f", *map(str, FOLDS), "-device", "cpu", *extra]) == 0
    return json.loads((output / "predictions.json").read_text())


def fold_values(records: list) -> np.ndarray:
    return np.array([[r[f"fold_{f}"] for f in FOLDS] for r in records])


@pytest.mark.parametrize("task_type", ["classification", "regression"])
def test_fomo_predict_applies_the_fitted_calibration_to_each_fold_unless_switched_off(
        task_type: str, trained_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    model = model_copy(trained_model(task_type), tmp_path, monkeypatch)
    assert find_best_configuration(["-d", model.dataset_id, "-tr", model.trainer, "-f", *map(str, FOLDS)]) == 0
    stored = json.loads((model.model_folder / CALIBRATION_JSON).read_text())
    assert stored["method"] != "none", stored.get("reason")

    with caplog.at_level(logging.INFO):
        calibrated = predicted_records(model, tmp_path / "calibrated")
    assert "calibration applied" in caplog.text
    raw = predicted_records(model, tmp_path / "raw", "--no-calibration")

    parameters = stored["parameters"]
    expected = (temperature_scaled(fold_values(raw).ravel(), parameters["temperature"]).reshape(-1, len(FOLDS))
                if task_type == "classification" else parameters["slope"] * fold_values(raw) + parameters["intercept"])
    np.testing.assert_allclose(fold_values(calibrated), expected, rtol=FLOAT_TOLERANCE, atol=FLOAT_TOLERANCE)
    np.testing.assert_allclose([r["prediction"] for r in calibrated], expected.mean(axis=1), rtol=1e-12)
    assert not np.allclose(fold_values(calibrated), fold_values(raw))  # the calibration changes something


def container_value(model_dir: Path, model: TrainedModel, case: str, output: Path, *extra: str) -> float:
    t1, t2 = model.test_images(case)  # the tiny regression model's two channels are named T1 and T2
    assert challenge_predict(["--t1", str(t1), "--t2", str(t2), "--output", str(output), "--model-dir",
                              str(model_dir), "--device", "cpu", *extra]) == 0
    return float(output.read_text())


def test_the_export_carries_the_calibration_and_the_container_applies_it(
        trained_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    model = model_copy(trained_model("regression"), tmp_path, monkeypatch)
    assert find_best_configuration(["-d", model.dataset_id, "-tr", model.trainer, "-f", *map(str, FOLDS)]) == 0
    models = tmp_path / "models"
    assert export_submission(["--task", "3", "-d", model.dataset_id, "-tr", model.trainer, "-f", *map(str, FOLDS),
                              "-o", str(models)]) == 0
    exported = models / "task3"
    assert CALIBRATION_JSON in json.loads((exported / MANIFEST).read_text())["sha256"]
    for name in NNUNET_DIRS:  # the container has its model folder, no nnU-Net data folders
        monkeypatch.delenv(name)
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)

    case = sorted(model.test_targets)[0]
    calibrated = container_value(models, model, case, tmp_path / "out" / "sub_1.txt")
    raw = container_value(models, model, case, tmp_path / "out" / "sub_2.txt", "--no-calibration")
    parameters = json.loads((exported / CALIBRATION_JSON).read_text())["parameters"]
    assert calibrated == pytest.approx(parameters["slope"] * raw + parameters["intercept"], abs=FLOAT_TOLERANCE)
    assert calibrated != pytest.approx(raw, abs=FLOAT_TOLERANCE)

    # a calibration changed after the export would change every age without a word: refused (by the next call, a
    # new process in the challenge: this process forgets which files it verified)
    monkeypatch.setattr(submission, "_verified_files", set())
    (exported / CALIBRATION_JSON).write_text(json.dumps({"method": "linear",
                                                         "parameters": {"slope": 1.0, "intercept": 10.0}}))
    with pytest.raises(SystemExit) as exit_info:
        container_value(models, model, case, tmp_path / "out" / "sub_3.txt")
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert CALIBRATION_JSON in capsys.readouterr().err


def test_evaluation_applies_the_stored_calibration_and_never_refits_it_on_the_test_set(
        trained_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = model_copy(trained_model("classification"), tmp_path, monkeypatch)
    stored = {"method": "temperature", "parameters": {"temperature": HAND_TEMPERATURE},
              "fitted_on": {"folds": ["0", "1"], "n_cases": 4}}
    (model.model_folder / CALIBRATION_JSON).write_text(json.dumps(stored))
    before = (model.model_folder / CALIBRATION_JSON).read_bytes()
    output = tmp_path / "eval"
    assert fomo_evaluate(["-d", model.dataset_id, "-tr", model.trainer, "-f", *map(str, FOLDS), "-o", str(output),
                          "-device", "cpu", "--n-bootstrap", "20"]) == 0

    assert (model.model_folder / CALIBRATION_JSON).read_bytes() == before
    summary = json.loads((output / "summary.json").read_text())
    raw = json.loads((output / "predictions" / "predictions_uncalibrated.json").read_text())
    calibrated = json.loads((output / "predictions" / "predictions.json").read_text())
    np.testing.assert_allclose(fold_values(calibrated),
                               temperature_scaled(fold_values(raw).ravel(), HAND_TEMPERATURE).reshape(-1, len(FOLDS)))
    assert list(summary["tables"][0]["metrics"]) == [*(f"fold {f}" for f in FOLDS), "ensemble",
                                                     "ensemble, uncalibrated"]

    section = summary["calibration"]
    assert section["fitted"]["parameters"] == {"temperature": HAND_TEMPERATURE}
    targets = model.test_targets
    for name, records in (("ensemble", calibrated), ("ensemble, uncalibrated", raw)):
        assert section["models"][name]["ece"] == pytest.approx(expected_calibration_error(
            [targets[r["case"]] for r in records], [r["prediction"] for r in records]))
    report = (output / "report.md").read_text()
    assert "## Calibration" in report and "figures/reliability_diagram.png" in report
    assert (output / "figures" / "reliability_diagram.png").is_file()


def test_evaluation_reports_the_age_bias_before_and_after(trained_model, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    model = model_copy(trained_model("regression"), tmp_path, monkeypatch)
    assert find_best_configuration(["-d", model.dataset_id, "-tr", model.trainer, "-f", *map(str, FOLDS)]) == 0
    output = tmp_path / "eval"
    assert fomo_evaluate(["-d", model.dataset_id, "-tr", model.trainer, "-f", *map(str, FOLDS), "-o", str(output),
                          "-device", "cpu", "--n-bootstrap", "20"]) == 0

    section = json.loads((output / "summary.json").read_text())["calibration"]
    targets = model.test_targets
    for name, stem in (("ensemble", "predictions"), ("ensemble, uncalibrated", "predictions_uncalibrated")):
        records = json.loads((output / "predictions" / f"{stem}.json").read_text())
        ages = np.array([targets[r["case"]] for r in records])
        predicted = np.array([r["prediction"] for r in records])
        slope, intercept = np.polyfit(ages, predicted - ages, 1)
        assert (section["models"][name]["slope"], section["models"][name]["intercept"]) == (
            pytest.approx(slope), pytest.approx(intercept))
        assert section["models"][name]["mae"] == pytest.approx(np.mean(np.abs(predicted - ages)))
    report = (output / "report.md").read_text()
    assert "## Calibration" in report and "figures/error_against_age.png" in report

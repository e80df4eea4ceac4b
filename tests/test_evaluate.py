"""fomo_evaluate: metrics, CIs, per-case table, summary.json and report.md, on hand-made predictions (against
metric functions called directly) and on tiny trained models (every fold and the ensemble)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from sklearn.metrics import mean_absolute_error
from bootstrap_reference import auroc, percentile_interval, sklearn_classification
from fomo_files import write_nifti
from trained_models import FOLDS, TrainedModel, use_model

from nnunet_ext.errors import EXIT_BAD_INPUT
from nnunet_ext.metrics.bootstrap import DEFAULT_SEED
from nnunet_ext.metrics.classification import classification_metrics, youden_threshold
from nnunet_ext.evaluation.evaluate import main
from nnunet_ext.metrics.regression import regression_metrics
from nnunet_ext.metrics.segmentation import segmentation_metrics

#: Few resamples keep the tests fast (the intervals are rebuilt from the seed by ``bootstrap_reference``).
N_BOOTSTRAP = 50
DATASET_ID = 990
SHAPE = (12, 10, 8)
SPACING = (1.0, 1.0, 2.0)


def hand_made_dataset(raw_root: Path, task_type: str, test_targets: dict, training_targets: dict | None = None
                      ) -> Path:
    """A raw dataset folder holding only what evaluation reads: dataset.json with the test targets (and the
    training targets the trivial references use)."""
    raw = raw_root / f"Dataset{DATASET_ID}_Eval"
    raw.mkdir(parents=True)
    dataset_json = {"channel_names": {"0": "DWI"}, "labels": {"background": 0, "target": 1}, "numTraining": 0,
                    "file_ending": ".nii.gz", "fomo": {"task_type": task_type, "test_targets": test_targets,
                             **({"targets": training_targets} if training_targets else {})}}
    (raw / "dataset.json").write_text(json.dumps(dataset_json))
    return raw


def write_predictions(folder: Path, predictions: dict) -> Path:
    """A fomo_predict output folder (predictions.json) with one fold."""
    folder.mkdir(parents=True)
    records = [{"case": c, "prediction": p, "fold_0": p} for c, p in predictions.items()]
    (folder / "predictions.json").write_text(json.dumps(records))
    return folder


def read_summary(output: Path) -> dict:
    return json.loads((output / "summary.json").read_text())


def embedded_figures(output: Path) -> list[str]:
    """Figures report.md embeds, checked to exist."""
    paths = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (output / "report.md").read_text())
    assert paths and all((output / p).is_file() for p in paths)
    return paths


def test_classification_from_prediction_files(nnunet_dirs, tmp_path: Path) -> None:
    targets = {f"sub_{i}_ses_1": i % 2 for i in range(8)}
    probabilities = dict(zip(targets, [0.1, 0.8, 0.3, 0.4, 0.2, 0.9, 0.6, 0.7]))
    hand_made_dataset(nnunet_dirs["nnUNet_raw"], "classification", targets)
    model_a = write_predictions(tmp_path / "a", probabilities)
    output = tmp_path / "eval"
    assert main(["-d", str(DATASET_ID), "-o", str(output), "--predictions", f"A={model_a}",
                 "--n-bootstrap", str(N_BOOTSTRAP)]) == 0

    summary = read_summary(output)
    (table,) = summary["tables"]  # no trained model: no Youden threshold, only 0.5
    expected = classification_metrics(list(targets.values()), list(probabilities.values()), threshold=0.5)
    y, p = np.array(list(targets.values())), np.array(list(probabilities.values()))
    for name, statistic in sklearn_classification(0.5).items():
        metric = table["metrics"]["A"][name]
        assert metric["value"] == pytest.approx(expected[name])
        # the percentile interval of the resamples rebuilt from the default seed, scored by scikit-learn
        assert (metric["ci_low"], metric["ci_high"]) == pytest.approx(
            percentile_interval(statistic, y, p, n_resamples=N_BOOTSTRAP, seed=DEFAULT_SEED), abs=1e-12), name
    assert summary["n_cases"] == len(targets)
    with open(output / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["case"], float(r["prediction"])) for r in rows} == set(probabilities.items())
    assert {"figures/roc.png", "figures/confusion_matrix_0.500.png"} <= set(embedded_figures(output))
    assert "Youden" in (output / "report.md").read_text()  # the note says why it is missing
    # the constant score of the trivial reference ranks no case above another
    head = summary["headline"]
    assert head["metric"] == "auroc" and head["model"] == "A" and head["value"] == pytest.approx(expected["auroc"])
    assert head["references"]["constant score"]["value"] == pytest.approx(0.5)


def test_seed_flag_draws_the_resamples_of_that_seed(nnunet_dirs, tmp_path: Path) -> None:
    targets = {f"sub_{i}_ses_1": i % 2 for i in range(8)}
    probabilities = dict(zip(targets, [0.1, 0.8, 0.3, 0.4, 0.2, 0.9, 0.6, 0.7]))
    hand_made_dataset(nnunet_dirs["nnUNet_raw"], "classification", targets)
    model = write_predictions(tmp_path / "a", probabilities)
    y, p = np.array(list(targets.values())), np.array(list(probabilities.values()))
    intervals = {}
    for seed in (DEFAULT_SEED, DEFAULT_SEED + 7):
        output = tmp_path / f"eval_{seed}"
        assert main(["-d", str(DATASET_ID), "-o", str(output), "--predictions", f"A={model}",
                     "--n-bootstrap", str(N_BOOTSTRAP), "--seed", str(seed)]) == 0
        summary = read_summary(output)
        assert summary["bootstrap"]["seed"] == seed
        auroc_entry = summary["tables"][0]["metrics"]["A"]["auroc"]
        intervals[seed] = (auroc_entry["ci_low"], auroc_entry["ci_high"])
        assert intervals[seed] == pytest.approx(
            percentile_interval(auroc, y, p, n_resamples=N_BOOTSTRAP, seed=seed), abs=1e-12)
    assert intervals[DEFAULT_SEED] != intervals[DEFAULT_SEED + 7]


def test_regression_from_prediction_files(nnunet_dirs, tmp_path: Path) -> None:
    targets = {f"sub_{i}_ses_1": float(20 + 7 * i) for i in range(6)}
    predicted = {c: t + (3.0 if i % 2 else -5.0) for i, (c, t) in enumerate(targets.items())}
    hand_made_dataset(nnunet_dirs["nnUNet_raw"], "regression", targets, training_targets={"sub_90_ses_1": 25.0,
                                                                                           "sub_91_ses_1": 35.0})
    output = tmp_path / "eval"
    assert main(["-d", str(DATASET_ID), "-o", str(output), "--n-bootstrap", str(N_BOOTSTRAP),
                 "--predictions", f"ensemble={write_predictions(tmp_path / 'e', predicted)}"]) == 0

    summary = read_summary(output)
    metrics = summary["tables"][0]["metrics"]["ensemble"]
    expected = regression_metrics(list(targets.values()), list(predicted.values()))
    assert metrics["mae"]["value"] == pytest.approx(expected["mae"]) == pytest.approx(4.0)
    # training mean 30: the reference's MAE, and the model (MAE 4) beats it by its whole interval
    training_mean_mae = np.mean(np.abs(np.array(list(targets.values())) - 30.0))
    assert summary["references"]["metrics"]["training mean"]["mae"]["value"] == pytest.approx(training_mean_mae)
    head = summary["headline"]
    assert head["references"]["training mean"] == {"value": pytest.approx(training_mean_mae), "beaten": "yes"}
    assert metrics["pearson_r"]["value"] == pytest.approx(expected["pearson_r"])
    assert {"figures/age_scatter.png", "figures/bland_altman.png"} <= set(embedded_figures(output))


def test_segmentation_from_mask_folders(nnunet_dirs, tmp_path: Path) -> None:
    raw = hand_made_dataset(nnunet_dirs["nnUNet_raw"], "segmentation", {})
    rng = np.random.default_rng(0)
    expected = {}
    for i in range(3):
        case = f"sub_{i}_ses_1"
        reference = np.zeros(SHAPE, np.uint8)
        reference[3:7, 3:6, 2:5] = 1
        prediction = np.roll(reference, i, axis=0)
        write_nifti(raw / "labelsTs" / f"{case}.nii.gz", reference, SPACING)
        write_nifti(tmp_path / "masks" / f"{case}.nii.gz", prediction, SPACING)
        write_nifti(raw / "imagesTs" / f"{case}_0000.nii.gz", rng.random(SHAPE).astype(np.float32), SPACING)
        # arrays in SimpleITK's (z, y, x) order, spacing reversed to match
        expected[case] = segmentation_metrics(reference.T, prediction.T, SPACING[::-1])
    output = tmp_path / "eval"
    assert main(["-d", str(DATASET_ID), "-o", str(output), "--predictions", f"model={tmp_path / 'masks'}",
                 "--n-bootstrap", str(N_BOOTSTRAP)]) == 0

    with open(output / "per_case.csv") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    for case, metrics in expected.items():
        assert float(rows[case]["dice"]) == pytest.approx(metrics["dice"])
        assert float(rows[case]["nsd"]) == pytest.approx(metrics["nsd"])
    mean_dice = read_summary(output)["tables"][0]["metrics"]["model"]["dice"]["value"]
    assert mean_dice == pytest.approx(np.mean([m["dice"] for m in expected.values()]))
    figures = embedded_figures(output)
    assert "figures/dice_per_case.png" in figures and any("overlay_" in f for f in figures)
    # references: an empty mask scores 0, the whole image (every voxel is non-zero here) its overlap
    references = read_summary(output)["references"]["metrics"]
    whole = np.mean([2 * 36 / (36 + np.prod(SHAPE))] * 3)
    assert references["all background"]["dice"]["value"] == 0.0
    assert references["whole brain"]["dice"]["value"] == pytest.approx(whole)


def shifted_masks(raw: Path, predictions: Path, labels_folder: str = "labelsTs") -> dict[str, tuple]:
    """Three cases: a box as reference, the prediction shifted by i voxels along the 2 mm axis; case ->
    (reference, prediction) arrays in SimpleITK's (z, y, x) order."""
    rng = np.random.default_rng(0)
    masks = {}
    for i in range(3):
        case = f"sub_{i}_ses_1"
        reference = np.zeros(SHAPE, np.uint8)
        reference[3:7, 3:6, 2:6] = 1
        prediction = np.roll(reference, i, axis=2)
        write_nifti(raw / labels_folder / f"{case}.nii.gz", reference, SPACING)
        write_nifti(predictions / f"{case}.nii.gz", prediction, SPACING)
        write_nifti(raw / "imagesTs" / f"{case}_0000.nii.gz", rng.random(SHAPE).astype(np.float32), SPACING)
        masks[case] = (reference.T, prediction.T)
    return masks


def test_nsd_tolerance_flag_sets_the_tolerance_of_the_surface_dice(nnunet_dirs, tmp_path: Path) -> None:
    raw = hand_made_dataset(nnunet_dirs["nnUNet_raw"], "segmentation", {})
    masks = shifted_masks(raw, tmp_path / "masks")
    nsd = {}
    for tolerance in (1.0, 2.5):
        output = tmp_path / f"eval_{tolerance}"
        assert main(["-d", str(DATASET_ID), "-o", str(output), "--predictions", f"model={tmp_path / 'masks'}",
                     "--n-bootstrap", str(N_BOOTSTRAP), "--nsd-tolerance", str(tolerance)]) == 0
        nsd[tolerance] = read_summary(output)["tables"][0]["metrics"]["model"]["nsd"]["value"]
        expected = [segmentation_metrics(r, p, SPACING[::-1], tolerance)["nsd"] for r, p in masks.values()]
        assert nsd[tolerance] == pytest.approx(np.mean(expected))
    # a shift of one 2 mm voxel lies beyond a 1 mm tolerance and within 2.5 mm
    assert nsd[1.0] < nsd[2.5]


def test_labels_flag_replaces_labelsTs(nnunet_dirs, tmp_path: Path) -> None:
    raw = hand_made_dataset(nnunet_dirs["nnUNet_raw"], "segmentation", {})
    shifted_masks(raw, tmp_path / "masks")
    # other references: the predictions themselves, so the Dice against them is 1 (against labelsTs it is not)
    other = tmp_path / "other_labels"
    shutil.copytree(tmp_path / "masks", other)
    dice = {}
    for name, extra in (("labelsTs", []), ("other", ["--labels", str(other)])):
        output = tmp_path / f"eval_{name}"
        assert main(["-d", str(DATASET_ID), "-o", str(output), "--predictions", f"model={tmp_path / 'masks'}",
                     "--n-bootstrap", str(N_BOOTSTRAP), *extra]) == 0
        dice[name] = read_summary(output)["tables"][0]["metrics"]["model"]["dice"]["value"]
    assert dice["other"] == pytest.approx(1.0) and dice["labelsTs"] < 0.9


def test_missing_prediction_for_a_test_case_is_refused(nnunet_dirs, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    hand_made_dataset(nnunet_dirs["nnUNet_raw"], "regression", {"sub_1_ses_1": 30.0, "sub_2_ses_1": 40.0})
    predictions = write_predictions(tmp_path / "p", {"sub_1_ses_1": 31.0})
    with pytest.raises(SystemExit) as exit_info:
        main(["-d", str(DATASET_ID), "-o", str(tmp_path / "eval"), "--predictions", f"p={predictions}"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "sub_2_ses_1" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()  # refused: no half-written output folder
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("content, message", [
    ('[{"case": "sub_1_ses_1", "prediction": 0.5, "fold_0": 0.5', "not valid JSON"),
    ('[{"case": "sub_1_ses_1", "prediction": "high", "fold_0": 0.5}]', "case sub_1_ses_1: prediction is 'high'"),
    ('[{"case": "sub_1_ses_1", "prediction": 0.5, "fold_0": null}]', "case sub_1_ses_1: fold_0 is None"),
    ('[{"case": "sub_1_ses_1", "prediction": 1.5, "fold_0": 1.5}]',
     "case sub_1_ses_1: prediction 1.5 is no probability"),
    ('{"sub_1_ses_1": 0.5}', "expected a list of records"),
], ids=["truncated JSON", "non-numeric", "null", "probability 1.5", "not a list"])
def test_malformed_prediction_files_are_refused_naming_file_and_case(content, message, nnunet_dirs, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    hand_made_dataset(nnunet_dirs["nnUNet_raw"], "classification", {"sub_1_ses_1": 1})
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "predictions.json").write_text(content)
    output = tmp_path / "previous_evaluation"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["-d", str(DATASET_ID), "-o", str(output), "--predictions", f"p={tmp_path / 'p'}"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert error.startswith(f"error: {tmp_path / 'p' / 'predictions.json'}: ") and message in error
    assert [p.name for p in output.iterdir()] == ["notes.txt"]  # what the folder held is untouched, nothing added


def test_an_output_path_that_is_a_file_is_refused(nnunet_dirs, tmp_path: Path, capsys) -> None:
    hand_made_dataset(nnunet_dirs["nnUNet_raw"], "regression", {"sub_1_ses_1": 30.0})
    predictions = write_predictions(tmp_path / "p", {"sub_1_ses_1": 31.0})
    (tmp_path / "report").write_text("a file")
    with pytest.raises(SystemExit) as exit_info:
        main(["-d", str(DATASET_ID), "-o", str(tmp_path / "report"), "--predictions", f"p={predictions}"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "output path is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "report").read_text() == "a file"


def evaluate_model(model: TrainedModel, output: Path) -> dict:
    assert main(["-d", model.dataset_id, "-o", str(output), "-tr", model.trainer, "-f", *map(str, FOLDS),
                 "-device", "cpu", "--n-bootstrap", str(N_BOOTSTRAP)]) == 0
    return read_summary(output)


def pooled_validation(model: TrainedModel) -> tuple[list, list]:
    records = [r for f in FOLDS for r in
               json.loads((model.model_folder / f"fold_{f}" / "validation" / "predictions.json").read_text())]
    return [r["target"] for r in records], [r["probability"] for r in records]


def test_trained_classifier_every_fold_and_the_ensemble(trained_model, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model("classification")
    use_model(monkeypatch, model)
    summary = evaluate_model(model, tmp_path / "eval")

    youden = youden_threshold(*pooled_validation(model))
    assert [t["threshold"] for t in summary["tables"]] == [0.5, pytest.approx(youden)]
    for table in summary["tables"]:
        assert list(table["metrics"]) == [*(f"fold {f}" for f in FOLDS), "ensemble"]
    predictions = json.loads((tmp_path / "eval" / "predictions" / "predictions.json").read_text())
    targets = model.test_targets
    auroc = classification_metrics([targets[r["case"]] for r in predictions], [r["prediction"] for r in predictions])
    assert summary["tables"][0]["metrics"]["ensemble"]["auroc"]["value"] == pytest.approx(auroc["auroc"], nan_ok=True)
    figures = embedded_figures(tmp_path / "eval")
    assert {"figures/roc.png", *(f"figures/training_curves_fold_{f}.png" for f in FOLDS)} <= set(figures)


def evaluate_the_trained(task_type: str, trained_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                         ) -> tuple[TrainedModel, dict]:
    model = trained_model(task_type)
    use_model(monkeypatch, model)
    summary = evaluate_model(model, tmp_path / "eval")
    (table,) = summary["tables"]
    assert list(table["metrics"]) == [*(f"fold {f}" for f in FOLDS), "ensemble"]
    with open(tmp_path / "eval" / "per_case.csv") as f:
        assert len(list(csv.DictReader(f))) == len(model.test_targets) * (len(FOLDS) + 1)
    assert any("training_curves" in f for f in embedded_figures(tmp_path / "eval"))
    return model, table["metrics"]


def test_trained_regressor_metrics_recomputed_from_the_written_predictions(trained_model, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    model, metrics = evaluate_the_trained("regression", trained_model, tmp_path, monkeypatch)
    records = json.loads((tmp_path / "eval" / "predictions" / "predictions.json").read_text())
    ages = [model.test_targets[r["case"]] for r in records]
    folds = np.array([[r[f"fold_{f}"] for f in FOLDS] for r in records])
    ensemble = np.array([r["prediction"] for r in records])
    np.testing.assert_allclose(ensemble, folds.mean(1), rtol=1e-6)  # the ensemble averages the folds
    assert metrics["fold 0"]["mae"]["value"] == pytest.approx(mean_absolute_error(ages, folds[:, 0]))
    assert metrics["ensemble"]["mae"]["value"] == pytest.approx(mean_absolute_error(ages, ensemble))
    assert metrics["fold 1"]["mae"]["value"] != pytest.approx(metrics["fold 0"]["mae"]["value"])


def numpy_dice(prediction: Path, reference: Path) -> float:
    predicted, truth = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) > 0 for p in (prediction, reference))
    return 2 * np.logical_and(predicted, truth).sum() / (predicted.sum() + truth.sum())


def test_trained_segmenter_dice_recomputed_from_the_written_masks(trained_model, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model, metrics = evaluate_the_trained("segmentation", trained_model, tmp_path, monkeypatch)
    references = sorted((model.raw / "labelsTs").glob("*.nii.gz"))
    assert len(references) == len(model.test_targets)
    for name in ("fold 0", "ensemble"):
        folder = tmp_path / "eval" / "predictions" / name.replace(" ", "_")
        dice = [numpy_dice(folder / reference.name, reference) for reference in references]
        assert metrics[name]["dice"]["value"] == pytest.approx(np.mean(dice)), name

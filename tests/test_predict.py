"""fomo_predict on tiny trained models: fold ensembles, the same numbers as the trainers' own validation,
nnU-Net's predictor for segmentation, and FOMO-layout input read in memory."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from trained_models import FOLDS, TrainedModel, use_model

from nnunet_ext.errors import EXIT_BAD_INPUT
from nnunet_ext.inference.ensemble import main as ensemble_main
from nnunet_ext.inference.predict import main

CASE_LEVEL = ("classification", "regression")
#: Tolerance between two CPU forward passes of the same network on the same data.
FLOAT_TOLERANCE = 1e-5
#: FOMO file stems of the tiny datasets' two channels (DWI, FLAIR).
CHANNEL_STEMS = ("dwi_b1000", "flair")


def predict(model: TrainedModel, input_dir: Path, output: Path, *extra: str) -> None:
    argv = ["-i", str(input_dir), "-o", str(output), "-d", model.dataset_id, "-tr", model.trainer,
            "-f", *map(str, FOLDS), "-device", "cpu", *extra]
    assert main(argv) == 0


def read_json(path: Path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("task_type", CASE_LEVEL)
def test_case_level_predictions_hold_each_fold_and_their_mean(task_type: str, trained_model, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model(task_type)
    use_model(monkeypatch, model)
    predict(model, model.raw / "imagesTs", tmp_path / "out")

    records = read_json(tmp_path / "out" / "predictions.json")
    with open(tmp_path / "out" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in records] == sorted(model.test_targets) == [r["case"] for r in rows]
    assert list(rows[0]) == ["case", "prediction", *(f"fold_{f}" for f in FOLDS)]
    for record, row in zip(records, rows):
        folds = [record[f"fold_{f}"] for f in FOLDS]
        assert record["prediction"] == pytest.approx(np.mean(folds))
        assert float(row["prediction"]) == pytest.approx(record["prediction"])
        if task_type == "classification":
            assert all(0.0 <= p <= 1.0 for p in folds)
    if task_type == "regression":
        # ages in years, de-standardised with each fold's own statistics (not z-scores around 0)
        assert all(10.0 < r["prediction"] < 90.0 for r in records)


@pytest.mark.parametrize("task_type", CASE_LEVEL)
def test_fold_prediction_equals_the_trainers_own_validation(task_type: str, trained_model, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Raw images through fomo_predict == the preprocessed volume through the trainer's --val (same TTA, weights)."""
    model = trained_model(task_type)
    use_model(monkeypatch, model)
    validation = read_json(model.model_folder / "fold_0" / "validation" / "predictions.json")
    images = tmp_path / "images"
    images.mkdir()
    for record in validation:
        for image in (model.raw / "imagesTr").glob(f"{record['case']}_*.nii.gz"):
            shutil.copy(image, images / image.name)
    predict(model, images, tmp_path / "out", "-f", "0")

    predicted = {r["case"]: r["fold_0"] for r in read_json(tmp_path / "out" / "predictions.json")}
    for record in validation:
        value = next(v for k, v in record.items() if k not in ("case", "target", "fold"))
        assert predicted[record["case"]] == pytest.approx(value, rel=FLOAT_TOLERANCE, abs=FLOAT_TOLERANCE)


def fomo_layout_copy(model: TrainedModel, root: Path) -> dict[str, str]:
    """The test images rearranged as a FOMO task folder (sub_<N>/ses_1/<stem>.nii.gz); case -> FOMO case id."""
    ids = {}
    for number, case in enumerate(sorted(model.test_targets), start=1):
        session = root / "preprocessed" / f"sub_{number}" / "ses_1"
        session.mkdir(parents=True)
        for stem, image in zip(CHANNEL_STEMS, model.test_images(case)):
            shutil.copy(image, session / f"{stem}.nii.gz")
        ids[case] = f"sub_{number}_ses_1"
    return ids


def test_fomo_layout_input_gives_the_same_predictions(trained_model, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model("classification")
    use_model(monkeypatch, model)
    ids = fomo_layout_copy(model, tmp_path / "fomo-task1")
    predict(model, model.raw / "imagesTs", tmp_path / "nnunet_style")
    predict(model, tmp_path / "fomo-task1", tmp_path / "fomo_style")

    nnunet_style = {r["case"]: r for r in read_json(tmp_path / "nnunet_style" / "predictions.json")}
    fomo_style = {r["case"]: r for r in read_json(tmp_path / "fomo_style" / "predictions.json")}
    assert sorted(fomo_style) == sorted(ids.values())
    for case, fomo_id in ids.items():
        assert fomo_style[fomo_id]["prediction"] == pytest.approx(nnunet_style[case]["prediction"], abs=FLOAT_TOLERANCE)


def test_segmentation_is_nnunets_fold_averaged_prediction_in_the_input_geometry(
        trained_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model("segmentation")
    use_model(monkeypatch, model)
    predict(model, model.raw / "imagesTs", tmp_path / "ours")
    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False)
    predictor.initialize_from_trained_model_folder(str(model.model_folder), FOLDS, "checkpoint_final.pth")
    (tmp_path / "nnunet").mkdir()  # nnU-Net's sequential prediction expects the folder
    predictor.predict_from_files_sequential(str(model.raw / "imagesTs"), str(tmp_path / "nnunet"))

    for case in model.test_targets:
        ours = sitk.ReadImage(str(tmp_path / "ours" / f"{case}.nii.gz"))
        image = sitk.ReadImage(str(model.test_images(case)[0]))
        nnunet = sitk.ReadImage(str(tmp_path / "nnunet" / f"{case}.nii.gz"))
        assert ours.GetSize() == image.GetSize() and ours.GetSpacing() == image.GetSpacing()
        assert ours.GetOrigin() == image.GetOrigin() and ours.GetDirection() == image.GetDirection()
        mask = sitk.GetArrayFromImage(ours)
        assert set(np.unique(mask)) <= {0, 1}
        np.testing.assert_array_equal(mask, sitk.GetArrayFromImage(nnunet))


def test_unknown_model_is_refused_with_exit_2(trained_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    model = trained_model("classification")
    use_model(monkeypatch, model)
    with pytest.raises(SystemExit) as exit_info:
        main(["-i", str(model.raw / "imagesTs"), "-o", str(tmp_path), "-d", model.dataset_id,
              "-tr", "FomoClassificationTrainer_5epochs", "-device", "cpu"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "no trained model here" in capsys.readouterr().err


def test_case_with_a_missing_channel_file_is_refused(trained_model, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model("regression")
    use_model(monkeypatch, model)
    images = tmp_path / "images"
    images.mkdir()
    case = sorted(model.test_targets)[0]
    shutil.copy(model.test_images(case)[0], images / model.test_images(case)[0].name)  # DWI only, no FLAIR
    with pytest.raises(SystemExit) as exit_info:
        predict(model, images, tmp_path / "out")
    assert exit_info.value.code == EXIT_BAD_INPUT


def write_prediction_folder(folder: Path, values: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "predictions.json").write_text(json.dumps([{"case": c, "prediction": v} for c, v in values.items()]))
    return folder


def test_fomo_ensemble_averages_models_case_by_case(tmp_path: Path) -> None:
    first = write_prediction_folder(tmp_path / "model_a", {"sub_1_ses_1": 0.2, "sub_2_ses_1": 0.9})
    second = write_prediction_folder(tmp_path / "model_b", {"sub_2_ses_1": 0.5, "sub_1_ses_1": 0.4})
    assert ensemble_main(["-i", str(first), str(second), "-o", str(tmp_path / "out")]) == 0

    records = read_json(tmp_path / "out" / "predictions.json")
    assert records == [{"case": "sub_1_ses_1", "prediction": pytest.approx(0.3), "model_a": 0.2, "model_b": 0.4},
                       {"case": "sub_2_ses_1", "prediction": pytest.approx(0.7), "model_a": 0.9, "model_b": 0.5}]
    third = write_prediction_folder(tmp_path / "model_c", {"sub_1_ses_1": 0.1})
    with pytest.raises(SystemExit) as exit_info:
        ensemble_main(["-i", str(first), str(third), "-o", str(tmp_path / "bad")])
    assert exit_info.value.code == EXIT_BAD_INPUT

"""fomo_find_best_configuration: pooled out-of-fold ranking of case-level models (hand-made validation folds),
the ensemble of the two best, the written instructions, and the hand-over to nnU-Net for segmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from trained_models import FOLDS, use_model

from nnunet_ext.errors import EXIT_BAD_INPUT
from nnunet_ext.metrics.classification import classification_metrics
from nnunet_ext.evaluation.model_selection import main

DATASET = "Dataset990_Selection"
PLANS_CONFIGURATION = "nnUNetPlans__3d_fullres"
CASES = [f"sub_{i}_ses_1" for i in range(8)]


def write_model(results: Path, trainer: str, task_type: str, targets: list, predictions: list,
                plans_configuration: str = PLANS_CONFIGURATION) -> None:
    """A trained model folder as the case-level trainers leave it: dataset.json and two validation folds."""
    folder = results / DATASET / f"{trainer}__{plans_configuration}"
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"fomo": {"task_type": task_type}}))
    name = "probability" if task_type == "classification" else "predicted_age"
    for fold in FOLDS:
        records = [{"case": c, "target": t, name: p, "fold": fold}
                   for i, (c, t, p) in enumerate(zip(CASES, targets, predictions)) if (i // 2) % len(FOLDS) == fold]
        (folder / f"fold_{fold}" / "validation").mkdir(parents=True)
        (folder / f"fold_{fold}" / "validation" / "predictions.json").write_text(json.dumps(records))


def select(results: Path, *extra: str) -> dict:
    """Run the command on :data:`DATASET`; returns its inference_information.json."""
    assert main(["-d", DATASET, "-f", *map(str, FOLDS), *extra]) == 0
    return json.loads((results / DATASET / "inference_information.json").read_text())


@pytest.fixture
def results(nnunet_dirs) -> Path:
    return nnunet_dirs["nnUNet_results"]


def test_plans_and_configuration_flags_pick_the_models_compared(results: Path) -> None:
    targets = [0, 1] * 4
    good = [0.2, 0.9, 0.1, 0.7, 0.4, 0.6, 0.3, 0.8]
    poor = [0.6, 0.5, 0.2, 0.1, 0.9, 0.3, 0.4, 0.7]
    write_model(results, "Net", "classification", targets, poor)
    write_model(results, "Net", "classification", targets, good, "OtherPlans__3d_fullres")
    write_model(results, "Net", "classification", targets, good[::-1], "nnUNetPlans__3d_other")
    info = select(results, "-tr", "Net", "-p", "nnUNetPlans", "OtherPlans", "--disable_ensembling")
    assert info["all_results"] == {
        f"Net__{PLANS_CONFIGURATION}": pytest.approx(classification_metrics(targets, poor)["auroc"]),
        "Net__OtherPlans__3d_fullres": pytest.approx(classification_metrics(targets, good)["auroc"])}
    assert info["best_model_or_ensemble"]["selected_model_or_models"] == [
        {"trainer": "Net", "plans_identifier": "OtherPlans", "configuration": "3d_fullres"}]
    info = select(results, "-tr", "Net", "-c", "3d_other", "--disable_ensembling")
    assert info["all_results"] == {
        "Net__nnUNetPlans__3d_other": pytest.approx(classification_metrics(targets, good[::-1])["auroc"])}
    assert info["best_model_or_ensemble"]["selected_model_or_models"] == [
        {"trainer": "Net", "plans_identifier": "nnUNetPlans", "configuration": "3d_other"}]


def test_classifiers_are_ranked_by_pooled_auroc(results: Path) -> None:
    targets = [0, 1] * 4
    good = [0.2, 0.9, 0.1, 0.7, 0.4, 0.6, 0.3, 0.8]
    poor = [0.6, 0.5, 0.2, 0.1, 0.9, 0.3, 0.4, 0.7]
    write_model(results, "Good", "classification", targets, good)
    write_model(results, "Poor", "classification", targets, poor)
    info = select(results, "-tr", "Poor", "Good", "--disable_ensembling")

    assert info["metric"] == "auroc"
    assert info["all_results"][f"Good__{PLANS_CONFIGURATION}"] == pytest.approx(
        classification_metrics(targets, good)["auroc"])
    assert info["all_results"][f"Poor__{PLANS_CONFIGURATION}"] == pytest.approx(
        classification_metrics(targets, poor)["auroc"])
    assert info["best_model_or_ensemble"]["selected_model_or_models"] == [
        {"trainer": "Good", "plans_identifier": "nnUNetPlans", "configuration": "3d_fullres"}]
    instructions = (results / DATASET / "inference_instructions.txt").read_text()
    assert f"fomo_predict -d {DATASET} -i INPUT_FOLDER -o OUTPUT_FOLDER -f 0 1 -tr Good" in instructions


def test_ensemble_of_two_regressors_with_opposite_bias_wins(results: Path) -> None:
    ages = list(np.linspace(20, 80, len(CASES)))
    write_model(results, "Over", "regression", ages, [a + 5 for a in ages])
    write_model(results, "Under", "regression", ages, [a - 6 for a in ages])
    info = select(results, "-tr", "Over", "Under")

    best = info["best_model_or_ensemble"]
    assert info["metric"] == "mae" and not info["higher_is_better"]
    assert best["identifier"].startswith("ensemble___")
    assert best["result_on_crossval"] == pytest.approx(0.5)  # mean of +5 and -6
    assert [m["trainer"] for m in best["selected_model_or_models"]] == ["Over", "Under"]
    assert info["all_results"][f"Over__{PLANS_CONFIGURATION}"] == pytest.approx(5.0)
    assert info["inference_commands"][-1] == "fomo_ensemble -i OUTPUT_FOLDER_MODEL_1 OUTPUT_FOLDER_MODEL_2 -o OUTPUT_FOLDER"


def test_model_without_validation_predictions_is_refused(results: Path, capsys: pytest.CaptureFixture) -> None:
    write_model(results, "Done", "regression", [30.0] * 8, [31.0] * 8)
    (results / DATASET / f"Done__{PLANS_CONFIGURATION}" / "fold_1" / "validation" / "predictions.json").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(["-d", DATASET, "-tr", "Done", "-f", "0", "1"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "--val" in capsys.readouterr().err


def test_segmentation_goes_to_nnunets_own_selection(trained_model, monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model("segmentation")
    use_model(monkeypatch, model)
    assert main(["-d", model.dataset_id, "-tr", model.trainer, "-f", *map(str, FOLDS)]) == 0

    info = json.loads((model.model_folder.parent / "inference_information.json").read_text())
    # nnU-Net's own format: Dice on the pooled cross-validation, with its postprocessing decision
    assert {"result_on_crossval_pre_pp", "postprocessing_file"} <= set(info["best_model_or_ensemble"])
    assert "nnUNetv2_predict" in (model.model_folder.parent / "inference_instructions.txt").read_text()

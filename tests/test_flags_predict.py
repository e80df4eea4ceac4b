"""The effect of fomo_predict's and fomo_evaluate's result-changing flags, on the tiny trained classifier:
``--disable_tta`` (one plain forward pass per fold), ``-chk`` (that checkpoint's weights, also in
fomo_export_submission and, as ``--checkpoint``, fomo_challenge_predict), ``-f all``, ``-p``, ``-c``.

A copy of the model's results folder is rearranged so that each flag has a visible effect: fold 0's
``checkpoint_best.pth`` holds fold 1's final weights, a ``fold_all`` is a copy of fold 1, and the model under other
plans (``-p``) and another configuration name (``-c``) is the same model with fold 0 holding fold 1's weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from trained_models import CONFIGURATION, FOLDS, PLANS, TrainedModel, use_model

from nnunet_ext.evaluation.evaluate import main as evaluate_main
from nnunet_ext.inference.predict import main as predict_main
from nnunet_ext.inference.submission import main as export_main
from nnunet_ext.trainers.case_validation import forward_whole_case

#: Tolerance between two CPU forward passes of the same network on the same data.
FLOAT_TOLERANCE = 1e-5
N_BOOTSTRAP = 10
OTHER_PLANS, OTHER_CONFIGURATION = "OtherPlans", "3d_other"


@pytest.fixture(scope="module")
def model(trained_model, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """The trained classifier with its results folder copied and rearranged (see the module docstring)."""
    trained = trained_model("classification")
    root = tmp_path_factory.mktemp("flags_model")
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        (root / name).symlink_to(trained.root / name)
    shutil.copytree(trained.root / "nnUNet_results", root / "nnUNet_results")
    copy = TrainedModel(root, trained.task_type, trained.dataset_name)
    fold_1_final = copy.model_folder / "fold_1" / "checkpoint_final.pth"
    shutil.copy(fold_1_final, copy.model_folder / "fold_0" / "checkpoint_best.pth")
    shutil.copytree(copy.model_folder / "fold_1", copy.model_folder / "fold_all")
    for plans, configuration in ((OTHER_PLANS, CONFIGURATION), (PLANS, OTHER_CONFIGURATION)):
        other = copy.model_folder.parent / f"{copy.trainer}__{plans}__{configuration}"
        shutil.copytree(copy.model_folder, other)
        shutil.copy(fold_1_final, other / "fold_0" / "checkpoint_final.pth")
        plans_file = other / "plans.json"
        plans_json = json.loads(plans_file.read_text())
        plans_json["plans_name"] = plans
        plans_json["configurations"][configuration] = plans_json["configurations"][CONFIGURATION]
        plans_file.write_text(json.dumps(plans_json))
    return copy


def predict(model: TrainedModel, output: Path, *flags: str) -> dict[str, dict]:
    argv = ["-i", str(model.raw / "imagesTs"), "-o", str(output), "-d", model.dataset_id, "-tr", model.trainer,
            "-device", "cpu", *flags]
    assert predict_main(argv) == 0
    return {r["case"]: r for r in json.loads((output / "predictions.json").read_text())}


def plain_forward_probabilities(model: TrainedModel, fold: int, mirror_axes=None) -> dict[str, float]:
    """P(positive) of the test cases (copies of training cases: their preprocessed volumes exist) by one forward
    pass (``mirror_axes``: averaged over the mirrorings) of the network nnU-Net's own predictor loads."""
    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False)
    predictor.initialize_from_trained_model_folder(str(model.model_folder), (fold,), "checkpoint_final.pth")
    predictor.network.load_state_dict(predictor.list_of_parameters[0])
    predictor.network.eval()
    folder = model.root / "nnUNet_preprocessed" / model.dataset_name / f"{PLANS}_{CONFIGURATION}"
    dataset = infer_dataset_class(str(folder))(str(folder), sorted(model.test_targets))
    probabilities = {}
    for case in sorted(model.test_targets):
        volume = torch.from_numpy(np.asarray(dataset.load_case(case)[0][:], dtype=np.float32))
        logits = forward_whole_case(predictor.network, volume, mirror_axes)
        probabilities[case] = float(torch.softmax(logits, dim=0)[1])
    return probabilities


def fold_values(records: dict[str, dict], fold) -> np.ndarray:
    return np.array([records[case][f"fold_{fold}"] for case in sorted(records)])


def test_disable_tta_gives_one_plain_forward_pass_per_fold(model: TrainedModel, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    use_model(monkeypatch, model)
    plain = predict(model, tmp_path / "plain", "-f", "0", "--disable_tta")
    mirrored = predict(model, tmp_path / "tta", "-f", "0")
    expected = plain_forward_probabilities(model, 0)
    np.testing.assert_allclose(fold_values(plain, 0), [expected[c] for c in sorted(expected)],
                               rtol=FLOAT_TOLERANCE, atol=FLOAT_TOLERANCE)
    expected_tta = plain_forward_probabilities(model, 0, mirror_axes=(0, 1, 2))
    np.testing.assert_allclose(fold_values(mirrored, 0), [expected_tta[c] for c in sorted(expected_tta)],
                               rtol=FLOAT_TOLERANCE, atol=FLOAT_TOLERANCE)
    assert not np.allclose(fold_values(plain, 0), fold_values(mirrored, 0), rtol=0, atol=FLOAT_TOLERANCE)


def test_checkpoint_flag_uses_that_checkpoints_weights(model: TrainedModel, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    use_model(monkeypatch, model)
    final = predict(model, tmp_path / "final", "-f", *map(str, FOLDS), "--disable_tta")
    best = predict(model, tmp_path / "best", "-f", "0", "-chk", "checkpoint_best.pth", "--disable_tta")
    # fold 0's checkpoint_best.pth holds fold 1's final weights
    np.testing.assert_allclose(fold_values(best, 0), fold_values(final, 1), rtol=FLOAT_TOLERANCE)
    assert not np.allclose(fold_values(final, 0), fold_values(final, 1), rtol=0, atol=FLOAT_TOLERANCE)


def test_fold_all_predicts_with_the_fold_all_model(model: TrainedModel, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    use_model(monkeypatch, model)
    final = predict(model, tmp_path / "final", "-f", "1", "--disable_tta")
    everything = predict(model, tmp_path / "all", "-f", "all", "--disable_tta")
    assert all(list(record) == ["case", "prediction", "fold_all"] for record in everything.values())
    np.testing.assert_allclose(fold_values(everything, "all"), fold_values(final, 1), rtol=FLOAT_TOLERANCE)


def test_evaluate_disable_tta_and_checkpoint_reach_the_predictions(model: TrainedModel, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    use_model(monkeypatch, model)
    output = tmp_path / "eval"
    assert evaluate_main(["-d", model.dataset_id, "-o", str(output), "-tr", model.trainer, "-f", "0",
                          "-chk", "checkpoint_best.pth", "--disable_tta", "-device", "cpu",
                          "--n-bootstrap", str(N_BOOTSTRAP)]) == 0
    written = {r["case"]: r for r in json.loads((output / "predictions" / "predictions.json").read_text())}
    # fold 0's checkpoint_best.pth holds fold 1's final weights; no mirroring
    expected = plain_forward_probabilities(model, 1)
    np.testing.assert_allclose(fold_values(written, 0), [expected[c] for c in sorted(expected)],
                               rtol=FLOAT_TOLERANCE, atol=FLOAT_TOLERANCE)


def test_export_submission_checkpoint_flag_exports_that_checkpoints_weights(model: TrainedModel, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    use_model(monkeypatch, model)
    assert export_main(["--task", "1", "-d", model.dataset_id, "-tr", model.trainer, "-f", "0",
                        "-chk", "checkpoint_best.pth", "-o", str(tmp_path / "models")]) == 0
    (exported_file,) = (tmp_path / "models" / "task1" / "fold_0").glob("*.pth")
    exported = torch.load(exported_file, map_location="cpu", weights_only=False)["network_weights"]
    # fold 0's checkpoint_best.pth holds fold 1's final weights
    source = torch.load(model.model_folder / "fold_1" / "checkpoint_final.pth", map_location="cpu",
                        weights_only=False)["network_weights"]
    final = torch.load(model.model_folder / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                       weights_only=False)["network_weights"]
    assert exported.keys() == source.keys()
    assert all(torch.equal(exported[k], v) for k, v in source.items())
    assert not all(torch.equal(exported[k], v) for k, v in final.items())


@pytest.mark.parametrize("flags", [["-p", OTHER_PLANS], ["-c", OTHER_CONFIGURATION]], ids=["plans", "configuration"])
def test_plans_and_configuration_flags_pick_the_model_folder(flags: list[str], model: TrainedModel, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    use_model(monkeypatch, model)
    default = predict(model, tmp_path / "default", "-f", *map(str, FOLDS), "--disable_tta")
    other = predict(model, tmp_path / "other", "-f", "0", "--disable_tta", *flags)
    # the other model folder's fold 0 holds fold 1's weights
    np.testing.assert_allclose(fold_values(other, 0), fold_values(default, 1), rtol=FLOAT_TOLERANCE)


@pytest.mark.parametrize("flags, column", [(["-f", "all"], "all"), (["-f", "0", "-p", OTHER_PLANS], 0),
                                           (["-f", "0", "-c", OTHER_CONFIGURATION], 0)],
                         ids=["fold all", "plans", "configuration"])
def test_evaluate_fold_plans_and_configuration_flags_pick_the_model(flags: list[str], column, model: TrainedModel,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    use_model(monkeypatch, model)
    reference = predict(model, tmp_path / "reference", "-f", "1", "--disable_tta")
    output = tmp_path / "eval"
    assert evaluate_main(["-d", model.dataset_id, "-o", str(output), "-tr", model.trainer, "--disable_tta",
                          "-device", "cpu", "--n-bootstrap", str(N_BOOTSTRAP), *flags]) == 0
    written = {r["case"]: r for r in json.loads((output / "predictions" / "predictions.json").read_text())}
    # fold_all, and fold 0 of the other plans' and configuration's folders, hold fold 1's weights
    np.testing.assert_allclose(fold_values(written, column), fold_values(reference, 1), rtol=FLOAT_TOLERANCE)


def test_challenge_predict_checkpoint_flag_changes_the_weights_used(model: TrainedModel, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from test_container import model_root, run, session_files

    root = tmp_path / "container_model"
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        root.mkdir(exist_ok=True)
        (root / name).symlink_to(model.root / name)
    folds_only = TrainedModel(root, model.task_type, model.dataset_name)
    shutil.copytree(model.model_folder, folds_only.model_folder, ignore=shutil.ignore_patterns("fold_all"))
    model_root(folds_only, 1, tmp_path, monkeypatch)
    files = session_files(folds_only, 1, tmp_path / "input" / "ses_1")
    values = {}
    for name, extra in (("default", ()), ("final", ("--checkpoint", "checkpoint_final.pth")),
                        ("best", ("--checkpoint", "checkpoint_best.pth"))):
        assert run(files, tmp_path / name / "sub_1.txt", *extra) == 0
        values[name] = float((tmp_path / name / "sub_1.txt").read_text())
    # fold 0's checkpoint_best.pth holds fold 1's final weights: another ensemble, another probability
    assert values["final"] == values["default"] and values["best"] != pytest.approx(values["default"], abs=1e-6)

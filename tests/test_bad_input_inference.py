"""Bad input to the inference and evaluation commands: each is refused with one line naming the file or option (exit
status 2) before heavy work, or described correctly; nothing the user gave is modified.

Classes: the device option (``auto`` by default, a named device that is absent refused), output paths that cannot be
written, masks of another shape, a case listed twice in a predictions file, an nnU-Net-style case of zeros, swapped
checkpoints of an exported model, an export into its own source folder, and misleading messages (container task
flags, our own fine-tuned checkpoints in fomo_inspect_checkpoint, compiled bare state dicts, fomo_predict's CSV,
partial transfers)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from fomo_files import brain_volume, write_nifti
from test_container import TASK_FLAGS, session_files
from test_evaluate import DATASET_ID, SHAPE, SPACING, hand_made_dataset, write_predictions
from test_submission import export
from trained_models import FOLDS, TrainedModel, use_model

from nnunet_ext.errors import EXIT_BAD_INPUT, FomoInputError
from nnunet_ext.evaluation.evaluate import main as evaluate_main
from nnunet_ext.inference.container import MODEL_DIR_ENV
from nnunet_ext.inference.container import main as container_main
from nnunet_ext.inference.ensemble import main as ensemble_main
from nnunet_ext.inference.predict import main as predict_main
from nnunet_ext.inference.predict import write_records
from nnunet_ext.inference.runtime import resolve_device
from nnunet_ext.inference.submission import main as export_main
from nnunet_ext.networks import FomoUNet
from nnunet_ext.pretrained.inspect import main as inspect_main
from nnunet_ext.pretrained.key_mapping import transfer_fomo_weights
from nnunet_ext.pretrained.testing import make_fomo_state_dict

#: A folder no one can create files in, even root: the kernel's process table.
UNWRITABLE = Path("/proc")
FILTERS = 4
N_BOOTSTRAP = 20


def refused(capsys: pytest.CaptureFixture, main, argv: list) -> str:
    """Run ``main(argv)``, expect the bad-input exit status, return the one error line."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    assert exit_info.value.code == EXIT_BAD_INPUT
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ")
    return lines[-1]


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without CUDA, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def assert_unwritable(error: str, path: Path) -> None:
    """One line naming ``path`` (or, for a user whom permissions stop first, the folder it would be made in)."""
    assert error.startswith(f"error: {path}: ") and "cannot" in error and str(UNWRITABLE) in error


def predict_argv(model: TrainedModel, images: Path, output: Path) -> list:
    return ["-i", images, "-o", output, "-d", model.dataset_id, "-tr", model.trainer, "-f", *FOLDS]


# --- the device ---------------------------------------------------------------------------------------------------


def test_auto_device_takes_the_cpu_without_a_gpu_and_says_so(no_gpu, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        assert resolve_device("auto") == torch.device("cpu")
    assert "predicting on cpu (no CUDA GPU found)" in caplog.text


@pytest.mark.parametrize("main, argv, option", [
    (predict_main, ["-i", "in", "-o", "out", "-d", "7", "-tr", "T", "-device", "cuda"], "-device cuda"),
    (evaluate_main, ["-d", "7", "-o", "out", "-tr", "T", "-device", "cuda"], "-device cuda"),
    (container_main, ["--t1", "t1.nii.gz", "--t2", "t2.nii.gz", "--output", "sub_1.txt", "--device", "cuda"],
     "--device cuda"),
], ids=["fomo_predict", "fomo_evaluate", "container"])
def test_a_device_the_machine_lacks_is_refused_naming_the_option(main, argv, option, no_gpu, capsys) -> None:
    error = refused(capsys, main, argv)
    assert error.startswith(f"error: {option}: this machine has no cuda device")


def test_fomo_predict_without_device_option_predicts_on_the_cpu(trained_model, tmp_path: Path, no_gpu,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model("classification")
    use_model(monkeypatch, model)
    assert predict_main([str(a) for a in predict_argv(model, model.raw / "imagesTs", tmp_path / "out")]) == 0
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())) == len(model.test_targets)


# --- output paths that cannot be written --------------------------------------------------------------------------


def test_container_output_in_an_unwritable_folder_is_refused_before_loading(tmp_path: Path, capsys,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path / "no_models"))  # never reached: the output is checked first
    images = {flag: write_nifti(tmp_path / f"{flag}.nii.gz", brain_volume((8, 8, 8), 0)) for flag in ("t1", "t2")}
    error = refused(capsys, container_main, ["--t1", images["t1"], "--t2", images["t2"],
                                             "--output", UNWRITABLE / "sub_1.txt", "--device", "cpu"])
    assert_unwritable(error, UNWRITABLE)


def test_fomo_predict_output_that_cannot_be_created_is_refused(trained_model, tmp_path: Path, capsys,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model("classification")
    use_model(monkeypatch, model)
    output = UNWRITABLE / "predictions" / "task1"
    error = refused(capsys, predict_main, [*predict_argv(model, model.raw / "imagesTs", output), "-device", "cpu"])
    assert_unwritable(error, output)


@pytest.mark.parametrize("command", ["fomo_evaluate", "fomo_ensemble"])
def test_evaluate_and_ensemble_outputs_that_cannot_be_created_are_refused(command: str, nnunet_dirs, tmp_path: Path,
                                                                          capsys) -> None:
    hand_made_dataset(nnunet_dirs["nnUNet_raw"], "regression", {"sub_1_ses_1": 30.0})
    first = write_predictions(tmp_path / "a", {"sub_1_ses_1": 31.0})
    second = write_predictions(tmp_path / "b", {"sub_1_ses_1": 33.0})
    output = UNWRITABLE / "reports" / "eval"
    if command == "fomo_evaluate":
        error = refused(capsys, evaluate_main, ["-d", DATASET_ID, "-o", output, "--predictions", f"a={first}"])
        assert_unwritable(error, output.parent)
    else:
        error = refused(capsys, ensemble_main, ["-i", first, second, "-o", output])
        assert_unwritable(error, output)


# --- fomo_evaluate: masks of another shape ------------------------------------------------------------------------


def segmentation_test_set(raw_root: Path, prediction_shape: tuple, prediction_value: int = 1) -> tuple:
    """One test case: its reference, its image and a predicted mask of ``prediction_shape`` in ``masks/``."""
    raw = hand_made_dataset(raw_root, "segmentation", {})
    reference = np.zeros(SHAPE, np.uint8)
    reference[3:7, 3:6, 2:5] = 1
    write_nifti(raw / "labelsTs" / "sub_1_ses_1.nii.gz", reference, SPACING)
    write_nifti(raw / "imagesTs" / "sub_1_ses_1_0000.nii.gz", brain_volume(SHAPE, 0), SPACING)
    prediction = np.zeros(prediction_shape, np.uint8)
    prediction[3:7, 3:6, 2:5] = prediction_value
    masks = raw_root.parent / "masks"
    write_nifti(masks / "sub_1_ses_1.nii.gz", prediction, SPACING)
    return raw / "labelsTs" / "sub_1_ses_1.nii.gz", masks


def test_a_mask_of_another_shape_is_refused_naming_the_file_and_both_shapes(nnunet_dirs, tmp_path: Path,
                                                                            capsys) -> None:
    reference, masks = segmentation_test_set(nnunet_dirs["nnUNet_raw"], (SHAPE[0] + 2, *SHAPE[1:]))
    error = refused(capsys, evaluate_main, ["-d", DATASET_ID, "-o", tmp_path / "eval",
                                            "--predictions", f"model={masks}"])
    # arrays in SimpleITK's (z, y, x) order: the NIfTI's (x, y, z) shape reversed
    assert error.startswith(f"error: {masks / 'sub_1_ses_1.nii.gz'}: model's predicted mask has shape [8, 10, 14], "
                            f"its reference {reference} [8, 10, 12]")
    assert not (tmp_path / "eval").exists()


def test_a_mask_with_labels_other_than_0_and_1_is_refused_naming_the_file(nnunet_dirs, tmp_path: Path,
                                                                          capsys) -> None:
    _, masks = segmentation_test_set(nnunet_dirs["nnUNet_raw"], SHAPE, prediction_value=2)
    error = refused(capsys, evaluate_main, ["-d", DATASET_ID, "-o", tmp_path / "eval",
                                            "--predictions", f"model={masks}"])
    assert error.startswith(f"error: {masks / 'sub_1_ses_1.nii.gz'}: model's predicted mask must be a binary mask")


# --- predictions files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("second_value", [0.9, 0.2], ids=["different values", "identical values"])
def test_a_case_listed_twice_is_refused_naming_file_and_case(second_value: float, nnunet_dirs, tmp_path: Path,
                                                             capsys) -> None:
    hand_made_dataset(nnunet_dirs["nnUNet_raw"], "classification", {"sub_1_ses_1": 1, "sub_2_ses_1": 0})
    folder = tmp_path / "p"
    folder.mkdir()
    records = [{"case": "sub_1_ses_1", "prediction": 0.2}, {"case": "sub_2_ses_1", "prediction": 0.4},
               {"case": "sub_1_ses_1", "prediction": second_value}]
    (folder / "predictions.json").write_text(json.dumps(records))
    expected = f"error: {folder / 'predictions.json'}: case sub_1_ses_1 is listed 2 times"
    assert refused(capsys, evaluate_main, ["-d", DATASET_ID, "-o", tmp_path / "eval", "--predictions",
                                           f"p={folder}"]).startswith(expected)
    other = write_predictions(tmp_path / "q", {"sub_1_ses_1": 0.5, "sub_2_ses_1": 0.5})
    assert refused(capsys, ensemble_main, ["-i", folder, other, "-o", tmp_path / "ensemble"]).startswith(expected)


def test_fomo_predicts_own_csv_is_evaluated_like_its_json(nnunet_dirs, tmp_path: Path) -> None:
    targets = {"sub_1_ses_1": 30.0, "sub_2_ses_1": 40.0, "sub_3_ses_1": 50.0}
    hand_made_dataset(nnunet_dirs["nnUNet_raw"], "regression", targets)
    predicted = tmp_path / "predicted"
    predicted.mkdir()
    write_records(predicted, [{"case": c, "prediction": t + 1.5, "fold_0": t + 1.0, "fold_1": t + 2.0}
                              for c, t in targets.items()])
    summaries = {}
    for name in ("predictions.csv", "predictions.json"):
        output = tmp_path / name
        assert evaluate_main(["-d", str(DATASET_ID), "-o", str(output), "--predictions", f"m={predicted / name}",
                              "--n-bootstrap", str(N_BOOTSTRAP)]) == 0
        summaries[name] = json.loads((output / "summary.json").read_text())["tables"]
    assert summaries["predictions.csv"] == summaries["predictions.json"]
    assert summaries["predictions.csv"][0]["metrics"]["m"]["mae"]["value"] == pytest.approx(1.5)


def test_a_csv_row_with_text_for_a_number_is_refused_naming_the_case(nnunet_dirs, tmp_path: Path, capsys) -> None:
    hand_made_dataset(nnunet_dirs["nnUNet_raw"], "regression", {"sub_1_ses_1": 30.0})
    path = tmp_path / "predictions.csv"
    path.write_text("case,prediction\nsub_1_ses_1,old\n")
    error = refused(capsys, evaluate_main, ["-d", DATASET_ID, "-o", tmp_path / "eval", "--predictions", f"m={path}"])
    assert error == f"error: {path}: case sub_1_ses_1: prediction is 'old', not a finite number"


# --- an nnU-Net-style case of zeros ---------------------------------------------------------------------------------


def test_an_nnunet_style_case_of_zeros_is_refused_as_in_the_fomo_layout(trained_model, tmp_path: Path, capsys,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model("classification")
    use_model(monkeypatch, model)
    images = tmp_path / "images"
    images.mkdir()
    dwi = model.test_images(sorted(model.test_targets)[0])[0]
    zeros = sitk.Image(sitk.ReadImage(str(dwi)).GetSize(), sitk.sitkFloat32)
    zeros.CopyInformation(sitk.ReadImage(str(dwi)))  # on the image's grid: only the voxels differ
    for channel in range(2):
        sitk.WriteImage(zeros, str(images / f"zeros_{channel:04d}.nii.gz"))
    error = refused(capsys, predict_main, [*predict_argv(model, images, tmp_path / "out"), "-device", "cpu"])
    assert error.startswith(f"error: {images / 'zeros_0000.nii.gz'}: every voxel is 0: no image")
    assert not (tmp_path / "out" / "predictions.json").exists()
    # a zero channel beside an image is a missing modality, as fomo_convert writes one: still predicted
    shutil.copy(dwi, images / "zeros_0000.nii.gz")
    assert predict_main([str(a) for a in [*predict_argv(model, images, tmp_path / "out"), "-device", "cpu"]]) == 0


# --- exported models ------------------------------------------------------------------------------------------------


def test_a_swapped_checkpoint_of_an_exported_model_is_refused(trained_model, tmp_path: Path, capsys,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model("classification")
    folder = export(model, 1, tmp_path / "models", monkeypatch)
    files = session_files(model, 1, tmp_path / "input" / "ses_1")
    argv = [*(arg for flag in TASK_FLAGS[1] for arg in (f"--{flag}", files[flag])), "--output",
            tmp_path / "out" / "sub_1.txt", "--model-dir", tmp_path / "models", "--device", "cpu"]
    swapped = folder / "fold_0" / "checkpoint_final.pth"
    shutil.copy(folder / "fold_1" / "checkpoint_final.pth", swapped)  # a valid checkpoint, not the exported one
    error = refused(capsys, container_main, argv)
    assert error.startswith(f"error: {swapped}: sha256 differs from the one manifest.json recorded at export")
    assert not (tmp_path / "out" / "sub_1.txt").exists()


@pytest.mark.parametrize("where, relation", [("equal", "is"), ("inside", "lies inside"), ("holding", "holds")])
def test_export_into_its_own_source_folder_is_refused(where: str, relation: str, trained_model, tmp_path: Path,
                                                      capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model("classification")
    use_model(monkeypatch, model)
    output = {"equal": model.model_folder, "inside": model.model_folder / "submission",
              "holding": model.model_folder.parent}[where]
    before = sorted(model.model_folder.parent.rglob("*"))
    error = refused(capsys, export_main, ["--task", "1", "-d", model.dataset_id, "-tr", model.trainer,
                                          "-f", *FOLDS, "-o", output])
    assert error.startswith(f"error: {output}: the output folder {relation} the trained model folder")
    assert sorted(model.model_folder.parent.rglob("*")) == before


# --- messages that said the wrong thing -----------------------------------------------------------------------------


def test_task1_flags_without_adc_say_which_task_they_select_and_what_is_missing(tmp_path: Path, capsys,
                                                                                monkeypatch) -> None:
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path))
    image = write_nifti(tmp_path / "image.nii.gz", brain_volume((8, 8, 8), 0))
    error = refused(capsys, container_main, ["--dwi_b1000", image, "--flair", image, "--swi", image,
                                             "--output", tmp_path / "sub_1.txt"])
    assert error == (f"error: {tmp_path / 'sub_1.txt'}: the flags --dwi_b1000 --flair --swi select task 2 "
                     "(meningioma), which writes a <case>.nii.gz file; a <case>.txt file comes from task 1 (infarct: "
                     "add --adc) or task 3 (age: give --t1 --t2 instead)")


@pytest.mark.parametrize("task_type, outputs", [("classification", 2), ("regression", 1)])
def test_inspect_describes_our_own_fine_tuned_checkpoint(task_type: str, outputs: int, tmp_path: Path,
                                                         capsys) -> None:
    network = FomoUNet(2, outputs, FILTERS, task_type=task_type)
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": network.state_dict(), "current_epoch": 3,
                "trainer_name": "FomoClassificationTrainer"}, path)
    assert inspect_main([str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["head"] == {"task_type": task_type, "outputs": outputs,
                            "pooled_features": network.head.linear.in_features}
    assert info["matches_fomo_layout"] and info["decoder_layout"] == "none (image-level head)"
    assert inspect_main([str(path)]) == 0
    assert f"head:             {task_type}: {outputs} output(s)" in capsys.readouterr().out


def test_inspect_reads_a_compiled_bare_state_dict(tmp_path: Path, capsys) -> None:
    path = tmp_path / "compiled.pt"
    torch.save({f"_orig_mod.{key}": tensor for key, tensor in make_fomo_state_dict(FILTERS).items()}, path)
    assert inspect_main([str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["matches_fomo_layout"] and info["starting_filters"] == FILTERS


def test_a_partial_transfer_names_no_option_that_does_not_exist() -> None:
    with pytest.raises(FomoInputError) as error:
        transfer_fomo_weights(FomoUNet(1, 2, FILTERS, decoder_convs=2), make_fomo_state_dict(FILTERS, "unet_b_lw_dec"))
    assert "--allow-partial" not in str(error.value) and "no command transfers part of a checkpoint" in str(error.value)

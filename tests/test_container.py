"""The challenge container's predict.py on tiny trained models: the task from the flags, one float per case-level
task, a {0, 1} mask in the input's exact geometry for segmentation, the same numbers as fomo_predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fomo_files import brain_volume, write_nifti
from trained_models import NNUNET_DIRS, TrainedModel, use_model

from nnunet_ext.dataset_conversion.fomo_reader import to_ras
from nnunet_ext.errors import EXIT_BAD_INPUT, FomoInputError
from nnunet_ext.inference.container import MODEL_DIR_ENV, detect_task, main
from nnunet_ext.inference.predict import FoldEnsemble
from nnunet_ext.inference.predict import main as fomo_predict

#: The flags that hold the tiny models' two channels (DWI, FLAIR) and the task's other channels.
TASK_FLAGS = {1: ("dwi_b1000", "flair", "adc", "swi"), 2: ("dwi_b1000", "flair", "t2s"), 3: ("t1", "t2")}
TASK_TYPES = {1: "classification", 2: "segmentation", 3: "regression"}
#: A grid that is not nnU-Net's default, so that a lost geometry cannot pass unnoticed.
SPACING, ORIGIN = (1.0, 1.0, 1.0), (-20.0, 14.0, 3.5)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def model_root(model: TrainedModel, task_id: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$FOMO_MODEL_DIR`` with ``task<N>`` pointing at the trained model folder."""
    use_model(monkeypatch, model)
    for name in NNUNET_DIRS:  # the container has a model folder, no nnU-Net data folders
        monkeypatch.delenv(name)
    root = tmp_path / "models"
    root.mkdir()
    (root / f"task{task_id}").symlink_to(model.model_folder)
    monkeypatch.setenv(MODEL_DIR_ENV, str(root))
    return root


def session_files(model: TrainedModel, task_id: int, folder: Path, spacing=SPACING, origin=ORIGIN,
                  direction=DIRECTION) -> dict[str, Path]:
    """One test case's two model channels under the task's first two flags, and made-up images for the others, all
    on the grid given (by default not RAS)."""
    case = sorted(model.test_targets)[0]
    files = {}
    for index, flag in enumerate(TASK_FLAGS[task_id]):
        path = folder / f"{flag}.nii.gz"
        images = model.test_images(case)
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(images[index]))).T if index < len(images) else \
            brain_volume(sitk.ReadImage(str(images[0])).GetSize(), index)
        files[flag] = write_nifti(path, array, spacing, origin, direction)
    return files


def run(files: dict[str, Path], output: Path, *extra: str) -> int:
    return main([*(arg for flag, path in files.items() for arg in (f"--{flag}", str(path))), "--output", str(output),
                 *extra])


@pytest.mark.parametrize("task_id", [1, 3])
def test_case_level_task_writes_the_fold_ensembles_value(task_id: int, trained_model, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model(TASK_TYPES[task_id])
    model_root(model, task_id, tmp_path, monkeypatch)
    files = session_files(model, task_id, tmp_path / "input" / "ses_1")
    assert run(files, tmp_path / "output" / "sub_7.txt") == 0

    value = float((tmp_path / "output" / "sub_7.txt").read_text())
    # the same session through fomo_predict: an nnU-Net-style copy of the model channels in RAS, as fomo_convert
    # stores them (the container reorients its non-RAS input the same way), every fold
    images = tmp_path / "nnunet_style"
    images.mkdir()
    for index, flag in enumerate(TASK_FLAGS[task_id][:2]):
        sitk.WriteImage(to_ras(sitk.ReadImage(str(files[flag]))), str(images / f"sub_7_{index:04d}.nii.gz"))
    use_model(monkeypatch, model)
    assert fomo_predict(["-i", str(images), "-o", str(tmp_path / "ref"), "-d", model.dataset_id,
                         "-tr", model.trainer, "-device", "cpu", "-f", "0", "1"]) == 0
    (expected,) = json.loads((tmp_path / "ref" / "predictions.json").read_text())
    assert value == pytest.approx(expected["prediction"], abs=1e-5)
    if task_id == 1:
        assert 0.0 <= value <= 1.0


def test_segmentation_mask_has_the_inputs_shape_and_affine(trained_model, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model("segmentation")
    model_root(model, 2, tmp_path, monkeypatch)
    files = session_files(model, 2, tmp_path / "input" / "ses_1")
    assert run(files, tmp_path / "output" / "sub_3.nii.gz") == 0

    mask = sitk.ReadImage(str(tmp_path / "output" / "sub_3.nii.gz"))
    image = sitk.ReadImage(str(files["dwi_b1000"]))
    assert mask.GetSize() == image.GetSize()
    np.testing.assert_allclose(mask.GetSpacing(), image.GetSpacing())
    np.testing.assert_allclose(mask.GetOrigin(), image.GetOrigin())
    np.testing.assert_allclose(mask.GetDirection(), image.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}


@pytest.mark.parametrize("flags, task_id, challenge", [
    (("dwi_b1000", "flair", "adc", "t2s"), 1, "fomo25"), (("dwi_b1000", "flair", "swi"), 2, "fomo25"),
    (("t2", "t1"), 3, "fomo25"), (("flair", "dwi", "adc", "swi"), 1, "fomo26"), (("dwi", "flair", "t2s"), 2, "fomo26"),
    (("t1",), 3, "fomo26")])
def test_task_and_challenge_are_detected_from_the_flags(flags: tuple, task_id: int, challenge: str) -> None:
    task, detected = detect_task(list(flags))
    assert (task.task_id, detected) == (task_id, challenge)


@pytest.mark.parametrize("flags", [("dwi", "dwi_b1000", "flair", "t2s"), ("dwi", "flair"), ("t2",)])
def test_flags_mixing_or_missing_channels_match_no_task(flags: tuple) -> None:
    with pytest.raises(FomoInputError, match="match no task"):
        detect_task(list(flags))


def test_flags_of_no_task_and_wrong_output_type_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    image = write_nifti(tmp_path / "t1.nii.gz", brain_volume((8, 8, 8), 0))
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path))
    for argv, message in [(["--t1", str(image), "--flair", str(image), "--output", str(tmp_path / "a.txt")],
                           "match no task"),
                          (["--t1", str(image), "--t2", str(image), "--output", str(tmp_path / "a.nii.gz")],
                           "writes a <case>.txt file")]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == EXIT_BAD_INPUT
        assert message in capsys.readouterr().err


def test_model_of_another_task_is_refused(trained_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    model_root(trained_model("classification"), 3, tmp_path, monkeypatch)  # task3/ holds the Task 1 model
    files = {flag: write_nifti(tmp_path / f"{flag}.nii.gz", brain_volume((8, 8, 8), 0)) for flag in ("t1", "t2")}
    with pytest.raises(SystemExit) as exit_info:
        run(files, tmp_path / "sub_1.txt")
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "holds a task 1 model, the flags ask for task 3" in capsys.readouterr().err


@pytest.mark.parametrize("choice, status", [("keep", 0), ("error", 1)])
def test_an_empty_mask_is_kept_with_a_warning_or_refused_never_padded(choice: str, status: int, trained_model,
                                                                       tmp_path: Path, monkeypatch, caplog) -> None:
    model = trained_model("segmentation")
    model_root(model, 2, tmp_path, monkeypatch)
    files = session_files(model, 2, tmp_path / "input" / "ses_1")
    real_segment = FoldEnsemble.segment

    def segment_nothing(self, data, properties, output_truncated):
        mask = real_segment(self, data, properties, output_truncated)
        image = sitk.ReadImage(str(mask))
        empty = sitk.Image(image.GetSize(), image.GetPixelID())
        empty.CopyInformation(image)
        sitk.WriteImage(empty, str(mask))
        return mask

    monkeypatch.setattr(FoldEnsemble, "segment", segment_nothing)
    output = tmp_path / "output" / "sub_4.nii.gz"
    assert main([*(a for flag, path in files.items() for a in (f"--{flag}", str(path))), "--output", str(output),
                 "--empty-mask", choice]) == status
    if choice == "keep":
        assert "the predicted mask is empty" in caplog.text
        assert np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(output)))).tolist() == [0]  # no voxel added
    else:
        assert not output.exists()


def test_images_not_co_registered_are_resampled_onto_the_first_with_a_warning(trained_model, tmp_path: Path,
                                                                              monkeypatch, caplog) -> None:
    """The container answers for every subject: a FLAIR stored in another orientation (the same voxels, permuted to
    RAS: the same physical space) is resampled onto the DWI's grid, said in the log, and predicted exactly as the
    co-registered session; an image sharing no space with the first one is refused."""
    model = trained_model("segmentation")
    model_root(model, 2, tmp_path, monkeypatch)
    files = session_files(model, 2, tmp_path / "input" / "ses_1")
    assert run(files, tmp_path / "output" / "sub_1.nii.gz") == 0
    other = tmp_path / "other" / "flair.nii.gz"
    other.parent.mkdir()
    sitk.WriteImage(to_ras(sitk.ReadImage(str(files["flair"]))), str(other))
    caplog.clear()
    assert run({**files, "flair": other}, tmp_path / "output" / "sub_2.nii.gz") == 0
    assert f"{other}: orientation differs from dwi_b1000.nii.gz" in caplog.text
    assert "not co-registered; resampled onto the grid of dwi_b1000.nii.gz" in caplog.text
    masks = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "output" / f"sub_{n}.nii.gz"))) for n in (1, 2)]
    np.testing.assert_array_equal(masks[1], masks[0])

    far = sitk.ReadImage(str(files["flair"]))
    far.SetOrigin(tuple(o + 1000.0 for o in far.GetOrigin()))  # a metre away: no voxel in common
    sitk.WriteImage(far, str(other))
    with pytest.raises(SystemExit) as exit_info:
        run({**files, "flair": other}, tmp_path / "output" / "sub_3.nii.gz")
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert not (tmp_path / "output" / "sub_3.nii.gz").exists()

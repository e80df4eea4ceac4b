"""Every kind of bad input: a clear error naming the file, exit status 2, and nothing written."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from fomo_files import TINY_SHAPE, FomoTree, brain_volume, write_nifti
from nnunet_ext.dataset_conversion.convert import main
from nnunet_ext.errors import EXIT_BAD_INPUT

N_GOOD_SUBJECTS = 6


def filled_tree(fomo_tree, task_id: int) -> FomoTree:
    tree = fomo_tree(task_id)
    for subject in range(1, N_GOOD_SUBJECTS + 1):
        tree.add_case(f"sub_{subject}", seed=subject, **({"label": subject % 2} if task_id == 1 else {}))
    return tree


def missing_label(tree: FomoTree) -> Path:
    files = tree.add_case("sub_9")
    files["label"].unlink()
    return files["label"]


def non_numeric_label(tree: FomoTree) -> Path:
    return tree.add_case("sub_9", label="positive")["label"]


def class_label_two(tree: FomoTree) -> Path:
    return tree.add_case("sub_9", label=2)["label"]


def mask_value_two(tree: FomoTree) -> Path:
    return tree.add_case("sub_9", label=np.full(TINY_SHAPE, 2, dtype=np.uint8))["label"]


def mask_fractional(tree: FomoTree) -> Path:
    return tree.add_case("sub_9", label=np.full(TINY_SHAPE, 0.5, dtype=np.float32))["label"]


def corrupt_nifti(tree: FomoTree) -> Path:
    path = tree.add_case("sub_9")["flair"]
    path.write_bytes(gzip.compress(b"not a nifti header at all"))
    return path


def truncated_nifti(tree: FomoTree) -> Path:
    path = tree.add_case("sub_9")["flair"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def nan_voxels(tree: FomoTree) -> Path:
    path = tree.add_case("sub_9")["flair"]
    volume = brain_volume(TINY_SHAPE, seed=9)
    volume[3, 3, 3] = np.nan
    return write_nifti(path, volume)


def inf_voxels(tree: FomoTree) -> Path:
    path = tree.add_case("sub_9")["t1"]
    volume = brain_volume(TINY_SHAPE, seed=9)
    volume[3, 3, 3] = np.inf
    return write_nifti(path, volume)


def mask_shape_mismatch(tree: FomoTree) -> Path:
    shape = tuple(s + 2 for s in TINY_SHAPE)
    return tree.add_case("sub_9", label=np.zeros(shape, dtype=np.uint8))["label"]


def duplicate_subject(tree: FomoTree) -> Path:
    tree.add_case("sub_01")
    return tree.root / "preprocessed" / "sub_01"


def not_co_registered(tree: FomoTree) -> Path:
    files = tree.add_case("sub_9")
    write_nifti(files["flair"], brain_volume(TINY_SHAPE, seed=9), origin=(40.0, 0.0, 0.0))
    return files["flair"]


def other_orientation(tree: FomoTree) -> Path:
    files = tree.add_case("sub_9")
    lps = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # ITK's identity: the other channels are RAS
    write_nifti(files["adc"], brain_volume(TINY_SHAPE, seed=9), direction=lps)
    return files["adc"]


# (task, how the input is spoilt, what the message says)
CASES = {
    "missing label.txt": (1, missing_label, "missing label.txt"),
    "non-numeric label": (1, non_numeric_label, "expected one number"),
    "class label 2": (1, class_label_two, "class label must be 0 or 1"),
    "mask value 2": (2, mask_value_two, "mask values must be 0 or 1"),
    "fractional mask": (2, mask_fractional, "mask values must be 0 or 1"),
    "corrupt NIfTI": (1, corrupt_nifti, "NIfTI"),
    "truncated NIfTI": (2, truncated_nifti, "corrupt or truncated NIfTI"),
    "NaN voxels": (2, nan_voxels, "1 NaN/Inf voxels"),
    "Inf voxels": (3, inf_voxels, "1 NaN/Inf voxels"),
    "mask shape != image shape": (2, mask_shape_mismatch, "does not match the image shape"),
    "duplicate subject ids": (3, duplicate_subject, "duplicate id sub_1"),
    "other field of view": (1, not_co_registered, "field of view differs from dwi_b1000.nii.gz"),
    "other orientation": (1, other_orientation, "orientation differs from dwi_b1000.nii.gz"),
}


def run_convert(argv) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_refused_naming_the_file(case, fomo_tree, nnunet_dirs, capsys):
    task_id, spoil, message = CASES[case]
    tree = filled_tree(fomo_tree, task_id)
    bad_file = spoil(tree)
    assert run_convert(["--task", str(task_id), "-i", str(tree.root), "-d", "7"]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert str(bad_file) in error and message in error
    assert list(nnunet_dirs["nnUNet_raw"].iterdir()) == []  # nothing written, no partial folder left


@pytest.mark.parametrize("make_input, message", [
    (lambda root: root, "neither a FOMO task folder"),  # empty folder
    (lambda root: (root / "preprocessed").mkdir() or root, "no sub_<N> folders found"),
    (lambda root: (root / "images").mkdir() or root, "neither a FOMO task folder"),  # wrong folder
    (lambda root: root / "does-not-exist", "input folder does not exist"),
], ids=["empty", "empty preprocessed", "wrong folder", "missing folder"])
def test_empty_or_wrong_input_folder(make_input: Callable[[Path], Path], message, tmp_path, nnunet_dirs, capsys):
    root = tmp_path / "input"
    root.mkdir()
    folder = make_input(root)
    assert run_convert(["--task", "1", "-i", str(folder), "-d", "7"]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert message in error and str(folder.name) in error
    assert list(nnunet_dirs["nnUNet_raw"].iterdir()) == []


def test_unset_nnunet_raw(fomo_tree, monkeypatch, capsys):
    tree = filled_tree(fomo_tree, 1)
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert run_convert(["--task", "1", "-i", str(tree.root), "-d", "7"]) == EXIT_BAD_INPUT
    assert "nnUNet_raw is not set" in capsys.readouterr().err


def test_nan_to_zero_converts_and_reports(fomo_tree, nnunet_dirs, caplog):
    caplog.set_level(logging.INFO)
    tree = filled_tree(fomo_tree, 2)
    nan_voxels(tree)
    assert main(["--task", "2", "-i", str(tree.root), "-d", "7", "--nan-to-zero"]) == 0
    assert "NaN/Inf voxels set to 0: 1" in caplog.text
    flair = nnunet_dirs["nnUNet_raw"] / "Dataset007_FOMOMeningioma/imagesTr/sub_9_ses_1_0001.nii.gz"
    voxels = sitk.GetArrayFromImage(sitk.ReadImage(str(flair)))
    assert np.isfinite(voxels).all() and voxels[3, 3, 3] == 0 and voxels[4, 4, 4] > 0

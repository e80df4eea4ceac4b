"""Every kind of bad input: a clear error naming the file, exit status 2, and nothing written."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from fomo_files import NIFTI_RAS_AFFINE, TINY_SHAPE, FomoTree, brain_volume, write_broken_header, write_nifti
from nnunet_ext.dataset_conversion import convert
from nnunet_ext.dataset_conversion.convert import main, target_outliers
from nnunet_ext.errors import EXIT_BAD_INPUT, EXIT_SIGNAL_BASE

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


def age(value: float) -> Callable[[FomoTree], Path]:
    return lambda tree: tree.add_case("sub_9", label=value)["label"]


def all_zero_image(tree: FomoTree) -> Path:
    return write_nifti(tree.add_case("sub_9")["flair"], np.zeros(TINY_SHAPE, np.float32))


def zero_voxel_size(tree: FomoTree) -> Path:
    return write_broken_header(tree.add_case("sub_9")["flair"], zooms=(1.0, 0.0, 1.0))


def negative_voxel_size(tree: FomoTree) -> Path:
    return write_broken_header(tree.add_case("sub_9")["t1"], zooms=(-1.0, 1.0, 1.0))


def series_of_volumes(tree: FomoTree) -> Path:
    path = tree.add_case("sub_9")["dwi_b1000"]
    nib.save(nib.Nifti1Image(np.ones((*TINY_SHAPE, 3), np.float32), NIFTI_RAS_AFFINE), path)
    return path


def two_spellings_of_a_modality(tree: FomoTree) -> Path:
    files = tree.add_case("sub_9")
    write_nifti(files["flair"].with_name("FLAIR.nii"), brain_volume(TINY_SHAPE, seed=9))
    return files["flair"].parent


def dangling_link(path: Path) -> Path:
    """Replace ``path`` by a link to a file that does not exist."""
    path.unlink()
    path.symlink_to("moved-away.nii.gz")
    return path


def dangling_flair(tree: FomoTree) -> Path:
    return dangling_link(tree.add_case("sub_9")["flair"])


def dangling_upper_case_flair(tree: FomoTree) -> Path:
    """A near-miss spelling (upper case, uncompressed) that is a dangling link."""
    flair = tree.add_case("sub_9")["flair"]
    flair.unlink()
    return dangling_link(write_nifti(flair.with_name("FLAIR.nii"), brain_volume(TINY_SHAPE, seed=9)))


def folder_as_modality(tree: FomoTree) -> Path:
    adc = tree.add_case("sub_9")["adc"]
    adc.unlink()
    adc.mkdir()
    return adc


def empty_modality(tree: FomoTree) -> Path:
    t2 = tree.add_case("sub_9")["t2"]
    t2.write_bytes(b"")
    return t2


def dangling_label(tree: FomoTree) -> Path:
    return dangling_link(tree.add_case("sub_9")["label"])


def misnamed_label(tree: FomoTree) -> Path:
    label = tree.add_case("sub_9")["label"]
    label.rename(label.with_name("label.csv"))
    return label


def two_labels_of_one_session(tree: FomoTree) -> Path:
    label = tree.add_case("sub_9")["label"]
    write_nifti(label.with_name("seg.nii"), np.zeros(TINY_SHAPE, np.uint8))
    return label.parent


def label_with_and_without_session_level(tree: FomoTree) -> Path:
    label = tree.add_case("sub_9")["label"]
    shutil.copy(label, label.parent.parent / label.name)
    return label.parent


def label_without_images(tree: FomoTree) -> Path:
    files = tree.add_case("sub_9")
    shutil.rmtree(tree.root / "preprocessed/sub_9")
    return files["label"]


def session_label_without_images(tree: FomoTree) -> Path:
    label = tree.root / "labels/sub_1/ses_2/label.txt"
    label.parent.mkdir()
    label.write_text("1\n")
    return label


def linked_modality(tree: FomoTree) -> Path:
    files = tree.add_case("sub_9")
    files["adc"].unlink()
    files["adc"].symlink_to(files["flair"].name)
    return files["adc"].parent


def copied_modality(tree: FomoTree) -> Path:
    files = tree.add_case("sub_9")
    shutil.copy(files["dwi_b1000"], files["swi"])
    return files["swi"].parent


def one_slice_scan(tree: FomoTree) -> Path:
    return tree.add_case("sub_9", shape=(*TINY_SHAPE[:2], 1))["t1"]


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
    "age -5": (3, age(-5), "age '-5' is outside the plausible range 0-120 years"),
    "age 250": (3, age(250), "age '250' is outside the plausible range 0-120 years"),
    "all-zero image": (2, all_zero_image, "every voxel is 0"),
    "zero voxel size": (2, zero_voxel_size, "voxel size [1.0, 0.0, 1.0] mm"),
    "negative voxel size": (3, negative_voxel_size, "voxel size [-1.0, 1.0, 1.0] mm"),
    "4D series": (1, series_of_volumes, "a series of volumes"),
    "FLAIR.nii beside flair.nii.gz": (2, two_spellings_of_a_modality, "FLAIR.nii and flair.nii.gz are both"),
    # a file there under a modality's name is never taken for a missing modality, whatever is wrong with it
    "dangling link flair": (2, dangling_flair, "is a link to moved-away.nii.gz, which does not exist"),
    "dangling link FLAIR.nii": (1, dangling_upper_case_flair, "is a link to moved-away.nii.gz, which does not exist"),
    "folder as modality": (1, folder_as_modality, "is a folder, not a file"),
    "empty modality file": (3, empty_modality, "is empty (0 bytes)"),
    "dangling link label.txt": (1, dangling_label, "is a link to moved-away.nii.gz, which does not exist"),
    "label.csv for label.txt": (1, misnamed_label, "missing label.txt (found label.csv)"),
    "seg.nii beside seg.nii.gz": (2, two_labels_of_one_session, "are labels of one session; keep one"),
    "label in sub_ and ses_ folder": (3, label_with_and_without_session_level, "are labels of one session"),
    "label of a subject without images": (3, label_without_images, "a label without images"),
    "label of a session without images": (1, session_label_without_images, "a label without images"),
    "one scan linked as two modalities": (1, linked_modality, "flair.nii.gz and adc.nii.gz are one scan (the same file)"),
    "one scan copied as two modalities": (2, copied_modality, "dwi_b1000.nii.gz and swi.nii.gz are one scan (identical copies)"),
    "one-slice scan": (3, one_slice_scan, "a single slice or a thin slab, not a 3-D brain volume"),
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
    (lambda root: write_nifti(root / "flair.nii.gz", brain_volume(TINY_SHAPE, seed=0)), "is a file, not a folder"),
], ids=["empty", "empty preprocessed", "wrong folder", "missing folder", "a file"])
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


@pytest.mark.parametrize("make_raw, message", [
    (lambda raw: raw.write_text("") or raw, "nnUNet_raw is a file, not a folder"),
    (lambda raw: raw.write_text("") or raw / "raw", "cannot create nnUNet_raw"),
], ids=["file", "below a file"])
def test_nnunet_raw_that_is_no_folder(make_raw, message, fomo_tree, nnunet_dirs, monkeypatch, capsys):
    raw = make_raw(nnunet_dirs["nnUNet_raw"].with_name("raw-file"))
    monkeypatch.setenv("nnUNet_raw", str(raw))
    assert run_convert(["--task", "1", "-i", str(filled_tree(fomo_tree, 1).root), "-d", "7"]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert message in error and "raw-file" in error and len(error.splitlines()) == 1


def test_nnunet_raw_that_cannot_be_written(fomo_tree, nnunet_dirs, monkeypatch, capsys):
    raw = nnunet_dirs["nnUNet_raw"]
    real_access = os.access
    # the tests run as root, for whom chmod blocks nothing: the folder is made unwritable in os.access's answer
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != raw and real_access(path, mode, **kw))
    assert run_convert(["--task", "1", "-i", str(filled_tree(fomo_tree, 1).root), "-d", "7"]) == EXIT_BAD_INPUT
    assert f"error: {raw}: cannot write into nnUNet_raw: {raw} is not writable" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file whatever its mode")
def test_unreadable_modality_is_refused(fomo_tree, nnunet_dirs, capsys):
    tree = filled_tree(fomo_tree, 1)
    flair = tree.add_case("sub_9")["flair"]
    flair.chmod(0)
    assert run_convert(["--task", "1", "-i", str(tree.root), "-d", "7"]) == EXIT_BAD_INPUT
    assert f"{flair}: cannot be read (Permission denied)" in capsys.readouterr().err


def test_uncompressed_and_upper_case_labels_are_read(fomo_tree, nnunet_dirs):
    """``seg.nii`` / ``SEG.NII.GZ`` are the mask, as ``flair.nii`` is the FLAIR (not "missing seg.nii.gz")."""
    tree = filled_tree(fomo_tree, 2)
    masks = {}
    for subject, name in ((8, "seg.nii"), (9, "SEG.NII.GZ")):
        label = tree.add_case(f"sub_{subject}", seed=subject)["label"]
        masks[subject] = np.zeros(TINY_SHAPE, np.uint8)
        masks[subject][2:5, 2:5, 2:5 + subject - 8] = 1
        write_nifti(label.with_name(f"tmp{name.lower()}"), masks[subject]).rename(label.with_name(name))
        label.unlink()
    assert main(["--task", "2", "-i", str(tree.root), "-d", "7"]) == 0
    labels = nnunet_dirs["nnUNet_raw"] / "Dataset007_FOMOMeningioma/labelsTr"
    for subject, mask in masks.items():
        converted = sitk.GetArrayFromImage(sitk.ReadImage(str(labels / f"sub_{subject}_ses_1.nii.gz")))
        np.testing.assert_array_equal(converted.transpose(), mask)


def test_nan_to_zero_converts_and_reports(fomo_tree, nnunet_dirs, caplog):
    caplog.set_level(logging.INFO)
    tree = filled_tree(fomo_tree, 2)
    nan_voxels(tree)
    assert main(["--task", "2", "-i", str(tree.root), "-d", "7", "--nan-to-zero"]) == 0
    assert "NaN/Inf voxels set to 0: 1" in caplog.text
    flair = nnunet_dirs["nnUNet_raw"] / "Dataset007_FOMOMeningioma/imagesTr/sub_9_ses_1_0001.nii.gz"
    voxels = sitk.GetArrayFromImage(sitk.ReadImage(str(flair)))
    assert np.isfinite(voxels).all() and voxels[3, 3, 3] == 0 and voxels[4, 4, 4] > 0


@pytest.mark.parametrize("argv, message", [
    (["-n", "../../evil"], "may only hold letters, digits"),
    (["-n", "with space"], "may only hold letters, digits"),
    (["--folds", "1"], "argument --folds: must be at least 2, got 1"),
    (["--test-fraction", "-0.1"], "argument --test-fraction: must be in [0, 0.5], got -0.1"),
    (["--test-fraction", "0.7"], "argument --test-fraction: must be in [0, 0.5], got 0.7"),
    (["--train-fraction", "0"], "argument --train-fraction: must be in (0, 1], got 0"),
    (["-d", "1000"], "argument -d/--dataset-id: must be in 1..999"),
    (["--spacing", "1", "0", "1"], "argument --spacing: must be positive, got 0"),
    (["--spacing", "1", "1", "1"], "--spacing applies to .npy arrays only"),  # NIfTI carries its own; never ignored
    (["--missing-modality", "error"], "channel(s) SWI_or_T2star absent from every case: --missing-modality error"),
], ids=["path in name", "space in name", "one fold", "negative test fraction", "test fraction 0.7",
        "train fraction 0", "id 1000",
        "zero spacing", "spacing with NIfTI", "missing-modality error, channel absent everywhere"])
def test_bad_options_are_refused_before_any_work(argv, message, fomo_tree, nnunet_dirs, tmp_path, capsys):
    tree = filled_tree(fomo_tree, 1)
    if "--missing-modality" in argv:  # SWI/T2* absent from every subject
        for swi in (tree.root / "preprocessed").rglob("swi.nii.gz"):
            swi.unlink()
    before = sorted(tmp_path.rglob("*"))
    assert run_convert(["--task", "1", "-i", str(tree.root), "-d", "7", *argv]) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written anywhere, inside nnUNet_raw or outside


@pytest.mark.parametrize("folder", ["nnUNet_preprocessed", "nnUNet_results"])
def test_an_id_used_by_another_dataset_in_any_nnunet_folder_is_refused(folder, fomo_tree, nnunet_dirs, capsys):
    tree = filled_tree(fomo_tree, 1)
    (nnunet_dirs[folder] / "Dataset007_SomethingElse").mkdir()
    assert run_convert(["--task", "1", "-i", str(tree.root), "-d", "7"]) == EXIT_BAD_INPUT
    assert f"dataset id 7 is already used by Dataset007_SomethingElse in {folder}" in capsys.readouterr().err
    assert list(nnunet_dirs["nnUNet_raw"].iterdir()) == []


def test_upper_case_and_uncompressed_modalities_are_converted(fomo_tree, nnunet_dirs, caplog):
    tree = filled_tree(fomo_tree, 1)
    files = tree.add_case("sub_9")
    flair = brain_volume(TINY_SHAPE, seed=99)
    write_nifti(files["flair"], flair).rename(files["flair"].with_name("FLAIR.NII.GZ"))  # ITK writes no such name
    adc = files["adc"]
    write_nifti(adc.with_name("adc.nii"), brain_volume(TINY_SHAPE, seed=98))
    adc.unlink()
    assert main(["--task", "1", "-i", str(tree.root), "-d", "7"]) == 0
    assert "miss a modality" not in caplog.text
    converted = nnunet_dirs["nnUNet_raw"] / "Dataset007_FOMOInfarct/imagesTr/sub_9_ses_1_0001.nii.gz"
    assert np.allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(converted))).transpose(), flair)


def test_stale_partial_folders_of_killed_runs_are_removed(fomo_tree, nnunet_dirs, caplog):
    raw = nnunet_dirs["nnUNet_raw"]
    dead_pid = 2 ** 22 + 1  # above Linux's pid_max: no such process
    stale = [raw / f".Dataset007_FOMOInfarct.{dead_pid}.x1.partial", raw / ".Dataset007_FOMOInfarct.legacy.partial"]
    live = raw / f".Dataset007_FOMOInfarct.{os.getppid()}.x2.partial"  # a running process builds this one
    for folder in (*stale, live):
        folder.mkdir()
    assert main(["--task", "1", "-i", str(filled_tree(fomo_tree, 1).root), "-d", "7"]) == 0
    assert not any(folder.exists() for folder in stale) and live.is_dir()
    assert "left by an interrupted run" in caplog.text and f"being built by process {os.getppid()}" in caplog.text


def test_sigterm_during_conversion_removes_the_partial_dataset(fomo_tree, nnunet_dirs, monkeypatch, capsys):
    tree = filled_tree(fomo_tree, 1)
    real_write_case = convert.write_case
    written = []

    def write_then_terminate(*args, **kwargs):
        written.append(real_write_case(*args, **kwargs))
        if len(written) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return written[-1]

    monkeypatch.setattr(convert, "write_case", write_then_terminate)
    assert run_convert(["--task", "1", "-i", str(tree.root), "-d", "7"]) == EXIT_SIGNAL_BASE + signal.SIGTERM
    assert "terminated" in capsys.readouterr().err
    assert list(nnunet_dirs["nnUNet_raw"].iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is only installed while a command runs


def test_far_out_targets_are_flagged_in_the_summary():
    ages = {f"sub_{i}_ses_1": 40.0 + i for i in range(10)}
    assert target_outliers(ages) == {}
    assert target_outliers({**ages, "sub_99_ses_1": 119.0}) == {"sub_99_ses_1": 119.0}

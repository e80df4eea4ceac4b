"""fomo_convert on both input layouts, its grids, channels, splits and safety (nnunet_ext.dataset_conversion.convert)."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import SimpleITK as sitk
from fomo_files import TINY_SHAPE, FomoTree, brain_volume, write_nifti
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

from nnunet_ext.dataset_conversion.convert import convert_fomo_dataset, main
from nnunet_ext.dataset_conversion.tasks import FOMO_KEY, get_task
from nnunet_ext.errors import FomoInputError

N_SUBJECTS = 10
N_FOLDS = 5


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def dataset_json(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text())


def assert_folds_leak_free(folder: Path) -> None:
    fomo = dataset_json(folder)[FOMO_KEY]
    folds = json.loads((folder / "splits_final.json").read_text())
    assert len(folds) == N_FOLDS
    for fold in folds:
        assert not {fomo["subjects"][c] for c in fold["train"]} & {fomo["subjects"][c] for c in fold["val"]}
    assert sorted(c for fold in folds for c in fold["val"]) == sorted(fomo["targets"])


def quirky_task1_tree(tree: FomoTree) -> FomoTree:
    """Ten subjects: t2s instead of swi (sub_2), no ses level (sub_3), two sessions (sub_4), no ADC (sub_5)."""
    standard = [c.stems[0] for c in tree.task.channels]
    for subject in range(1, N_SUBJECTS + 1):
        stems = standard
        if subject == 2:
            stems = standard[:-1] + ["t2s"]
        if subject == 5:
            stems = [s for s in standard if s != "adc"]
        tree.add_case(f"sub_{subject}", label=subject % 2, session=None if subject == 3 else "ses_1", stems=stems,
                      seed=subject)
    tree.add_case("sub_4", label=0, session="ses_2", seed=40)
    return tree


def test_nifti_layout_task1(fomo_tree, nnunet_dirs, caplog):
    caplog.set_level(logging.INFO)
    tree = quirky_task1_tree(fomo_tree(1))
    out = convert_fomo_dataset(1, tree.root, 11)

    assert out == nnunet_dirs["nnUNet_raw"] / "Dataset011_FOMOInfarct"
    assert "found the nifti layout" in caplog.text
    # the missing-modality warning names the case, the channel and what the folder holds instead
    assert "sub_5_ses_1: no ADC (found dwi_b1000.nii.gz, flair.nii.gz, swi.nii.gz in " in caplog.text
    meta = dataset_json(out)
    assert meta["channel_names"] == {"0": "DWI", "1": "FLAIR", "2": "ADC", "3": "SWI_or_T2star"}
    assert meta["labels"] == {"background": 0, "brain": 1}
    assert meta["numTraining"] == N_SUBJECTS + 1
    fomo = meta[FOMO_KEY]
    assert fomo["task_type"] == "classification" and fomo["label_map"] == "brain_mask"
    assert fomo["targets"]["sub_4_ses_2"] == 0 and fomo["targets"]["sub_3_ses_1"] == 1
    assert fomo["subjects"]["sub_4_ses_2"] == "sub_4"
    assert fomo["missing_modalities"] == {"sub_5_ses_1": ["ADC"]}
    assert fomo["source"] == {"layout": "nifti", "input": str(tree.root)}
    assert fomo["test_targets"] == {}

    # t2s fills the SWI/T2* channel; the missing ADC is a zero image on the case's grid
    t2s = tree.root / "preprocessed/sub_2/ses_1/t2s.nii.gz"
    np.testing.assert_array_equal(read(out / "imagesTr/sub_2_ses_1_0003.nii.gz"), read(t2s))
    adc = read(out / "imagesTr/sub_5_ses_1_0002.nii.gz")
    assert adc.shape == read(out / "imagesTr/sub_5_ses_1_0000.nii.gz").shape and not adc.any()
    # labelsTr: the non-zero voxels of any channel
    channels = [read(out / f"imagesTr/sub_1_ses_1_{i:04d}.nii.gz") for i in range(4)]
    np.testing.assert_array_equal(read(out / "labelsTr/sub_1_ses_1.nii.gz"), np.any(channels, axis=0))
    assert_folds_leak_free(out)


@pytest.mark.parametrize("strategy", ["drop", "error"])
def test_missing_modality_strategies(strategy, fomo_tree, nnunet_dirs, caplog):
    tree = quirky_task1_tree(fomo_tree(1))
    if strategy == "error":
        with pytest.raises(FomoInputError, match=r"sub_5_ses_1: no ADC \(found dwi_b1000.nii.gz"):
            convert_fomo_dataset(1, tree.root, 11, missing_modality=strategy)
        return
    out = convert_fomo_dataset(1, tree.root, 11, missing_modality=strategy)
    fomo = dataset_json(out)[FOMO_KEY]
    assert "sub_5_ses_1" not in fomo["targets"] and len(fomo["targets"]) == N_SUBJECTS
    assert fomo["missing_modality_strategy"] == "drop" and fomo["missing_modalities"] == {}
    assert "sub_5_ses_1: no ADC (found " in caplog.text


def test_channel_absent_everywhere_is_left_out(fomo_tree, nnunet_dirs, caplog):
    tree = fomo_tree(3)
    for subject in range(1, N_SUBJECTS + 1):
        tree.add_case(f"sub_{subject}", label=20.0 + 5 * subject, stems=["t1"], seed=subject)
    out = convert_fomo_dataset(3, tree.root, 13)
    meta = dataset_json(out)
    assert meta["channel_names"] == {"0": "T1"}
    assert sorted(p.name for p in (out / "imagesTr").iterdir())[:2] == ["sub_10_ses_1_0000.nii.gz",
                                                                        "sub_1_ses_1_0000.nii.gz"]
    assert meta[FOMO_KEY]["targets"]["sub_2_ses_1"] == 30.0
    assert "absent from every case" in caplog.text and "T2" in caplog.text


def test_slightly_different_header_is_resampled_onto_the_first_modality(fomo_tree, nnunet_dirs):
    tree = fomo_tree(2)
    for subject in range(1, N_SUBJECTS + 1):
        tree.add_case(f"sub_{subject}", seed=subject)
    flair = tree.root / "preprocessed/sub_1/ses_1/flair.nii.gz"
    write_nifti(flair, brain_volume(TINY_SHAPE, seed=1), spacing=(1.02, 1.0, 1.0), origin=(0.3, 0.0, 0.0))
    out = convert_fomo_dataset(2, tree.root, 12)
    grids = [sitk.ReadImage(str(out / f"imagesTr/sub_1_ses_1_{i:04d}.nii.gz")) for i in range(3)]
    grids.append(sitk.ReadImage(str(out / "labelsTr/sub_1_ses_1.nii.gz")))
    for image in grids:
        assert image.GetSize() == TINY_SHAPE and image.GetSpacing() == (1.0, 1.0, 1.0)
        assert image.GetOrigin() == (0.0, 0.0, 0.0)
    resampled = sitk.GetArrayFromImage(grids[1])
    assert not np.array_equal(resampled, read(flair)) and resampled.max() > 1.0


def npy_copy(tree: FomoTree, mask_in_array: bool, object_array: bool = False, with_pkl: bool = True) -> Path:
    """The yucca-style copy of a NIfTI tree: ``<root>/preprocessed_2/sub_<N>.npy`` beside ``<root>/labels``."""
    folder = tree.root / "preprocessed_2"
    folder.mkdir()
    for subject_dir in sorted((tree.root / "preprocessed").iterdir()):
        session = subject_dir / "ses_1"
        channels = [read(session / f"{c.stems[0]}.nii.gz").transpose() for c in tree.task.channels]
        if mask_in_array:
            channels.append(read(tree.root / "labels" / subject_dir.name / "ses_1/seg.nii.gz").transpose())
        if object_array:
            array = np.empty(len(channels), dtype=object)
            array[:] = channels
        else:
            array = np.stack(channels)
        np.save(folder / f"{subject_dir.name}.npy", array, allow_pickle=object_array)
        if with_pkl:
            with open(folder / f"{subject_dir.name}.pkl", "wb") as f:
                pickle.dump({"spacing": [1.0, 1.0, 1.0]}, f)
    return folder


def case_arrays(out: Path) -> Dict[str, np.ndarray]:
    return {p.name: read(p) for part in ("imagesTr", "labelsTr") for p in sorted((out / part).iterdir())}


@pytest.mark.parametrize("mask_in_array, object_array", [(True, False), (True, True), (False, False)],
                         ids=["mask last channel", "object array", "mask from labels tree"])
def test_npy_layout_gives_the_same_dataset_as_nifti(mask_in_array, object_array, fomo_tree, nnunet_dirs, caplog):
    caplog.set_level(logging.INFO)
    tree = fomo_tree(2)
    for subject in range(1, N_SUBJECTS + 1):
        tree.add_case(f"sub_{subject}", seed=subject)
    from_nifti = convert_fomo_dataset(2, tree.root, 21)
    from_npy = convert_fomo_dataset(2, npy_copy(tree, mask_in_array, object_array), 22)
    assert "found the npy layout" in caplog.text
    nifti_arrays, npy_arrays = case_arrays(from_nifti), case_arrays(from_npy)
    assert nifti_arrays.keys() == npy_arrays.keys()
    for name in nifti_arrays:
        np.testing.assert_array_equal(nifti_arrays[name], npy_arrays[name])
    fomo = dataset_json(from_npy)[FOMO_KEY]
    assert fomo["targets"] == dataset_json(from_nifti)[FOMO_KEY]["targets"]
    assert fomo["source"]["layout"] == "npy"


def test_npy_layout_spacing_flag_and_labels_tree(fomo_tree, nnunet_dirs):
    tree = fomo_tree(3)
    for subject in range(1, N_SUBJECTS + 1):
        tree.add_case(f"sub_{subject}", label=30.0 + subject, seed=subject)
    folder = npy_copy(tree, mask_in_array=False, with_pkl=False)
    with pytest.raises(FomoInputError, match="no spacing"):
        convert_fomo_dataset(3, folder, 23)
    out = convert_fomo_dataset(3, folder, 23, spacing=(0.9, 0.9, 5.0))
    assert sitk.ReadImage(str(out / "imagesTr/sub_1_ses_1_0001.nii.gz")).GetSpacing() == pytest.approx((0.9, 0.9, 5.0))
    assert dataset_json(out)[FOMO_KEY]["targets"]["sub_7_ses_1"] == 37.0


def test_npy_array_with_one_scan_as_two_channels_is_refused(fomo_tree, nnunet_dirs):
    tree = fomo_tree(3)
    for subject in range(1, N_SUBJECTS + 1):
        tree.add_case(f"sub_{subject}", label=30.0 + subject, seed=subject)
    folder = npy_copy(tree, mask_in_array=False)
    t1 = np.load(folder / "sub_4.npy")[0]
    np.save(folder / "sub_4.npy", np.stack([t1, t1]))
    with pytest.raises(FomoInputError, match="sub_4.npy: channels T1 and T2 are identical"):
        convert_fomo_dataset(3, folder, 23)


def test_test_fraction_holds_out_whole_subjects(fomo_tree, nnunet_dirs):
    tree = quirky_task1_tree(fomo_tree(1))
    out = convert_fomo_dataset(1, tree.root, 11, test_fraction=0.2, seed=1)
    fomo = dataset_json(out)[FOMO_KEY]
    test = set(fomo["test_targets"])
    assert test and test.isdisjoint(fomo["targets"])
    assert {p.name[: -len("_0000.nii.gz")] for p in (out / "imagesTs").glob("*_0000.nii.gz")} == test
    assert {p.name[: -len(".nii.gz")] for p in (out / "labelsTs").iterdir()} == test
    assert {fomo["subjects"][c] for c in test}.isdisjoint(fomo["subjects"][c] for c in fomo["targets"])
    assert dataset_json(out)["numTraining"] == len(fomo["targets"])
    assert_folds_leak_free(out)


def test_train_fraction_keeps_whole_subjects_and_the_full_conversions_test_set(synthetic_fomo, nnunet_dirs, caplog):
    caplog.set_level(logging.INFO)
    full = dataset_json(convert_fomo_dataset(3, synthetic_fomo(3), 41, test_fraction=0.2))[FOMO_KEY]
    assert main(["--task", "3", "-i", str(synthetic_fomo(3)), "-d", "42", "--test-fraction", "0.2",
                 "--train-fraction", "0.75"]) == 0
    out = nnunet_dirs["nnUNet_raw"] / "Dataset042_FOMOBrainAge"
    part = dataset_json(out)[FOMO_KEY]
    assert part["test_targets"] == full["test_targets"]
    kept = set(part["targets"])
    subjects = {full["subjects"][c] for c in kept}
    assert kept == {c for c in full["targets"] if full["subjects"][c] in subjects}  # whole subjects, all sessions
    n_full = len({full["subjects"][c] for c in full["targets"]})
    assert 0.6 * n_full <= len(subjects) <= 0.9 * n_full
    assert part["train_fraction"] == 0.75 and part["left_out_cases"] == len(full["targets"]) - len(kept) > 0
    assert {p.name[: -len("_0000.nii.gz")] for p in (out / "imagesTr").glob("*_0000.nii.gz")} == kept
    assert {p.name[: -len(".nii.gz")] for p in (out / "labelsTr").iterdir()} == kept
    assert dataset_json(out)["numTraining"] == len(kept) and set(part["subjects"]) == kept | set(full["test_targets"])
    assert_folds_leak_free(out)
    assert f"left out: {part['left_out_cases']} case(s)" in caplog.text


def tree_digest(root: Path) -> Dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_input_untouched_and_existing_dataset_kept_unless_overwrite(fomo_tree, nnunet_dirs, capsys):
    tree = quirky_task1_tree(fomo_tree(1))
    before = tree_digest(tree.root)
    argv = ["--task", "1", "-i", str(tree.root), "-d", "11", "--seed", "3"]
    assert main(argv) == 0
    out = nnunet_dirs["nnUNet_raw"] / "Dataset011_FOMOInfarct"
    marker = out / "imagesTr/sub_1_ses_1_0000.nii.gz"
    marker.write_bytes(b"edited")
    with pytest.raises(SystemExit):
        main(argv)
    assert "pass --overwrite" in capsys.readouterr().err and marker.read_bytes() == b"edited"
    assert main(argv + ["--overwrite"]) == 0
    assert read(marker).shape == TINY_SHAPE[::-1]
    assert sorted(p.name for p in nnunet_dirs["nnUNet_raw"].iterdir()) == [out.name]
    assert tree_digest(tree.root) == before


def test_dataset_id_taken_by_another_name(fomo_tree, nnunet_dirs):
    tree = quirky_task1_tree(fomo_tree(1))
    convert_fomo_dataset(1, tree.root, 11)
    with pytest.raises(FomoInputError, match="already used by Dataset011_FOMOInfarct"):
        convert_fomo_dataset(1, tree.root, 11, name="Other")


@pytest.mark.parametrize("task_id", [1, 2, 3])
def test_synthetic_data_passes_nnunet_integrity_check(task_id, synthetic_fomo, nnunet_dirs):
    out = convert_fomo_dataset(task_id, synthetic_fomo(task_id), 30 + task_id, test_fraction=0.2)
    verify_dataset_integrity(str(out), num_processes=1)  # raises on any problem
    meta = dataset_json(out)
    assert list(meta["channel_names"].values()) == list(get_task(task_id).channel_names)
    fomo = meta[FOMO_KEY]
    assert len(set(fomo["subjects"].values())) < len(fomo["subjects"])  # second sessions grouped with the first
    if task_id == 2:
        assert min(fomo["targets"].values()) > 0  # every synthetic subject has a mass
    assert_folds_leak_free(out)


def test_non_ras_case_is_stored_in_ras_with_the_same_physical_content(nnunet_dirs, tmp_path):
    """A PSR-stored case (like the IXI data) becomes RAS: the same voxels, permuted and flipped, nothing resampled."""
    tree = FomoTree(tmp_path / "fomo-task3", 3)
    psr = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # i: P, j: S, k: R (direction columns in ITK's LPS)
    for subject in range(1, 11):
        files = tree.add_case(f"sub_{subject}", label=20.0 + subject, seed=subject)
        if subject == 1:
            for seed, stem in enumerate(("t1", "t2")):
                write_nifti(files[stem], brain_volume(TINY_SHAPE, seed=100 + seed), spacing=(1.0, 2.0, 3.0),
                            direction=psr)
    out = convert_fomo_dataset(3, tree.root, 31)
    source = sitk.ReadImage(str(tree.root / "preprocessed/sub_1/ses_1/t1.nii.gz"))
    converted = sitk.ReadImage(str(out / "imagesTr/sub_1_ses_1_0000.nii.gz"))
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(converted.GetDirection()) == "RAS"
    assert sorted(converted.GetSize()) == sorted(source.GetSize()) and converted.GetSize() != source.GetSize()
    # every voxel keeps its position in the world
    for index in [(0, 0, 0), (3, 5, 7), (11, 9, 7)]:
        point = source.TransformIndexToPhysicalPoint(index)
        assert converted[converted.TransformPhysicalPointToIndex(point)] == pytest.approx(source[index])
    label = sitk.ReadImage(str(out / "labelsTr/sub_1_ses_1.nii.gz"))
    assert label.GetSize() == converted.GetSize() and label.GetDirection() == converted.GetDirection()


def test_task2_targets_are_the_lesion_volumes_and_test_cases_keep_their_own_masks(fomo_tree, nnunet_dirs):
    """The lesion volume (the stratification target) is measured on each mask as it is written, and the test cases,
    written before the split is known, end up in imagesTs/labelsTs with their own files, none left in imagesTr."""
    tree = fomo_tree(2)
    masks = {}
    for subject in range(1, N_SUBJECTS + 1):
        mask = np.zeros(TINY_SHAPE, np.uint8)
        mask[2:4, 2:4, : subject] = 1  # a different lesion volume per subject
        masks[f"sub_{subject}_ses_1"] = mask
        tree.add_case(f"sub_{subject}", label=mask, spacing=(1.0, 1.0, 2.0), seed=subject)
    out = convert_fomo_dataset(2, tree.root, 12, test_fraction=0.2, seed=0)
    fomo = dataset_json(out)[FOMO_KEY]
    volumes = {**fomo["targets"], **fomo["test_targets"]}
    assert volumes == {case: pytest.approx(mask.sum() * 2.0 / 1000) for case, mask in masks.items()}
    assert fomo["test_targets"]
    for case in fomo["test_targets"]:
        np.testing.assert_array_equal(read(out / f"labelsTs/{case}.nii.gz").transpose(), masks[case])
        assert not list((out / "imagesTr").glob(f"{case}_*")) and not (out / f"labelsTr/{case}.nii.gz").exists()
        assert len(list((out / "imagesTs").glob(f"{case}_*"))) == len(get_task(2).channels)
    for case in fomo["targets"]:
        np.testing.assert_array_equal(read(out / f"labelsTr/{case}.nii.gz").transpose(), masks[case])


def test_integer_scans_stay_integer_and_nnunet_reads_the_source_values(fomo_tree, nnunet_dirs):
    """An int16 scan is written as int16 (half the bytes of float32); nnU-Net's reader gives the source's values."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    tree = fomo_tree(3)
    for subject in range(1, N_SUBJECTS + 1):
        files = tree.add_case(f"sub_{subject}", label=20.0 + subject, seed=subject)
    scan = np.round(brain_volume(TINY_SHAPE, seed=7) * 1000).astype(np.int16)
    write_nifti(files["t1"], scan)
    out = convert_fomo_dataset(3, tree.root, 13)
    converted = out / f"imagesTr/sub_{N_SUBJECTS}_ses_1_0000.nii.gz"
    assert sitk.ReadImage(str(converted)).GetPixelID() == sitk.sitkInt16
    images, _ = SimpleITKIO().read_images([str(converted)])
    np.testing.assert_array_equal(images[0].transpose(), scan.astype(np.float32))

"""Tests of the synthetic FOMO data generator (``fomo_make_synthetic``), on the real files it writes."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from nnunet_ext.dataset_conversion.synthetic import (
    LABEL_BLOCK,
    POSITIVES_PER_BLOCK,
    is_positive,
    main,
    make_synthetic_dataset,
    synthesize_subject,
)
from nnunet_ext.dataset_conversion.tasks import get_task
from nnunet_ext.errors import EXIT_BAD_INPUT, FomoInputError

N_CASES = 20  # two quirk blocks: every quirk occurs
TINY_SHAPE = (24, 28, 24)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[int, Path]:
    """One default-sized dataset per task (about a second each)."""
    root = tmp_path_factory.mktemp("synthetic")
    return {task: make_synthetic_dataset(task, root / f"task{task}", n_cases=N_CASES, seed=0) for task in (1, 2, 3)}


def sessions(root: Path) -> list[Path]:
    """Session folders under ``root/preprocessed``, relative to it."""
    return sorted(p.relative_to(root / "preprocessed") for p in (root / "preprocessed").glob("sub_*/ses_*"))


def load(path: Path) -> nib.Nifti1Image:
    return nib.load(str(path))


@pytest.mark.parametrize("task_id", [1, 2, 3])
def test_layout_and_file_names(datasets, task_id):
    root, task = datasets[task_id], get_task(task_id)
    assert sorted(p.name for p in root.iterdir()) == ["labels", "preprocessed"]
    subjects = {p.name for p in (root / "preprocessed").iterdir()}
    assert subjects == {f"sub_{n}" for n in range(1, N_CASES + 1)}
    label_sessions = sorted(p.relative_to(root / "labels") for p in (root / "labels").glob("sub_*/ses_*"))
    assert label_sessions == sessions(root)
    for session in sessions(root):
        assert session.name in ("ses_1", "ses_2")
        stems = {p.name.removesuffix(".nii.gz") for p in (root / "preprocessed" / session).iterdir()}
        assert all(p.name.endswith(".nii.gz") for p in (root / "preprocessed" / session).iterdir())
        # One file per channel (swi or t2s, never both); task 1 may lack one channel.
        hits = [len(stems & set(c.stems)) for c in task.channels]
        assert all(h <= 1 for h in hits) and sum(hits) == len(stems)
        assert sum(hits) >= len(task.channels) - (task_id == 1)
        assert [p.name for p in (root / "labels" / session).iterdir()] == [task.label_file]
        label = root / "labels" / session / task.label_file
        if task_id == 1:
            assert re.fullmatch(r"[01]\n", label.read_text())
        elif task_id == 3:
            assert 20 <= float(label.read_text()) <= 90


def test_same_seed_same_arrays_other_seed_other_arrays():
    first, again, other = (synthesize_subject(1, 2, seed=s, shape=TINY_SHAPE) for s in (5, 5, 6))
    for stem, array in first.sessions[0].images.items():
        assert array.tobytes() == again.sessions[0].images[stem].tobytes()
    assert first.sessions[0].images["dwi_b1000"].tobytes() != other.sessions[0].images["dwi_b1000"].tobytes()


def test_a_subject_does_not_depend_on_the_number_of_cases(datasets, tmp_path):
    small = make_synthetic_dataset(3, tmp_path / "small", n_cases=3, seed=0)
    for stem in ("t1", "t2"):
        a = np.asanyarray(load(small / "preprocessed/sub_3/ses_1" / f"{stem}.nii.gz").dataobj)
        b = np.asanyarray(load(datasets[3] / "preprocessed/sub_3/ses_1" / f"{stem}.nii.gz").dataobj)
        np.testing.assert_array_equal(a, b)


def test_task1_classes_in_the_real_ratio_and_both_present():
    for seed in range(20):
        assert {is_positive(seed, 1), is_positive(seed, 2)} == {True, False}
        assert sum(is_positive(seed, n) for n in range(1, LABEL_BLOCK + 1)) == POSITIVES_PER_BLOCK


def test_task1_dataset_has_both_classes(datasets):
    labels = {p.read_text() for p in (datasets[1] / "labels").glob("sub_*/ses_*/label.txt")}
    assert labels == {"0\n", "1\n"}


def test_infarct_bright_on_dwi_and_flair_dark_on_adc():
    for number in range(1, 9):
        subject = synthesize_subject(1, number, seed=0)
        session = subject.sessions[0]
        if not session.target:
            assert not session.lesion.any()
            continue
        lesion = session.lesion
        assert lesion.sum() * abs(np.linalg.det(session.affine)) / 1000 > 1  # ml
        # Same region in the other hemisphere (the array is RAS: axis 0 runs left to right).
        contralateral = np.flip(lesion, axis=0) & ~lesion
        # Bright on DWI and FLAIR, dark on ADC, little change on SWI / T2*.
        expected = {"dwi_b1000": (1.4, np.inf), "flair": (1.4, np.inf), "adc": (0, 0.8),
                    "swi": (0.75, 1.35), "t2s": (0.75, 1.35)}
        for stem, image in session.images.items():
            ratio = np.median(image[lesion].astype(float)) / np.median(image[contralateral].astype(float))
            low, high = expected[stem]
            assert low < ratio < high, (number, stem, ratio)


def test_meningioma_masks(datasets):
    root = datasets[2]
    for session in sessions(root):
        seg = load(root / "labels" / session / "seg.nii.gz")
        mask = np.asanyarray(seg.dataobj)
        assert seg.get_data_dtype() == np.uint8 and set(np.unique(mask)) == {0, 1}
        flair = load(root / "preprocessed" / session / "flair.nii.gz")
        assert flair.shape == seg.shape
        np.testing.assert_allclose(flair.affine, seg.affine)
        image = np.asanyarray(flair.dataobj).astype(float)
        foreground = image > 0
        # Extra-axial: the mass reaches the outer boundary of the skull-stripped head.
        boundary = foreground & ~ndimage.binary_erosion(foreground)
        assert (mask.astype(bool) & boundary).any(), session
        assert np.median(image[mask == 1]) > 1.2 * np.median(image[foreground & (mask == 0)]), session


def test_task3_csf_volume_correlates_with_age_but_not_perfectly(datasets):
    root = datasets[3]
    ages, csf_ml = [], []
    for n in range(1, N_CASES + 1):
        t2 = load(root / f"preprocessed/sub_{n}/ses_1/t2.nii.gz")
        image = np.asanyarray(t2.dataobj).astype(float)
        voxel_ml = abs(np.linalg.det(t2.affine[:3, :3])) / 1000
        # CSF is the brightest tissue on T2; the threshold is relative, the intensity scale being arbitrary.
        csf_ml.append((image > 1.6 * np.median(image[image > 0])).sum() * voxel_ml)
        ages.append(float((root / f"labels/sub_{n}/ses_1/label.txt").read_text()))
    r = np.corrcoef(ages, csf_ml)[0, 1]
    assert 0.5 < r < 0.99
    assert min(ages) < 35 and max(ages) > 70


def test_quirks_of_real_data_are_present(datasets):
    root = datasets[1]
    shapes, zooms, axcodes, dtypes, stems = set(), [], set(), set(), set()
    for session in sessions(root):
        images = [load(p) for p in sorted((root / "preprocessed" / session).iterdir())]
        stems |= {p.name.removesuffix(".nii.gz") for p in (root / "preprocessed" / session).iterdir()}
        for image in images:  # co-registered: one grid per session
            assert image.shape == images[0].shape
            np.testing.assert_array_equal(image.affine, images[0].affine)
            data = np.asanyarray(image.dataobj)
            assert data.min() == 0 and data.ravel()[0] == 0  # non-negative, exact-zero background
            np.testing.assert_array_equal(data > 0, np.asanyarray(images[0].dataobj) > 0)
        shapes.add(images[0].shape)
        zooms.append(images[0].header.get_zooms())
        axcodes.add(nib.aff2axcodes(images[0].affine))
        dtypes |= {image.get_data_dtype() for image in images}
    assert len(shapes) > N_CASES // 2
    assert any(max(z) / min(z) >= 3 for z in zooms) and any(max(z) == min(z) for z in zooms)
    assert ("R", "A", "S") in axcodes and len(axcodes) > 1
    assert {"swi", "t2s"} <= stems
    assert {np.dtype(np.int16), np.dtype(np.float32)} == dtypes
    per_session = [len(list((root / "preprocessed" / s).iterdir())) for s in sessions(root)]
    assert min(per_session) == 3 and max(per_session) == 4  # a missing modality
    second = [s for s in sessions(root) if s.name == "ses_2"]
    assert second and all((root / "labels" / s / "label.txt").is_file() for s in second)


def test_second_session_is_the_same_subject_older():
    subject = next(s for s in (synthesize_subject(3, n, seed=0) for n in range(1, 11)) if len(s.sessions) == 2)
    first, second = subject.sessions
    assert second.target > first.target
    a, b = first.images["t2"].astype(float), second.images["t2"].astype(float)
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.8


def test_non_ras_subjects_reorient_back_to_the_phantom(datasets):
    root = datasets[2]
    checked = 0
    for number in range(1, N_CASES + 1):
        subject = synthesize_subject(2, number, seed=0)
        if subject.quirks.orientation == "RAS":
            continue
        session = subject.sessions[0]
        stored = load(root / f"preprocessed/sub_{number}/ses_1/dwi_b1000.nii.gz")
        assert "".join(nib.aff2axcodes(stored.affine)) == subject.quirks.orientation
        canonical = nib.as_closest_canonical(stored)
        np.testing.assert_array_equal(np.asanyarray(canonical.dataobj), session.images["dwi_b1000"])
        np.testing.assert_allclose(canonical.affine, session.affine)
        mask = nib.as_closest_canonical(load(root / f"labels/sub_{number}/ses_1/seg.nii.gz"))
        np.testing.assert_array_equal(np.asanyarray(mask.dataobj).astype(bool), session.lesion)
        checked += 1
    assert checked


def test_refuses_a_non_empty_output_folder_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    precious = out / "precious.txt"
    precious.write_text("user data")
    with pytest.raises(FomoInputError, match="not empty"):
        make_synthetic_dataset(3, out, n_cases=1, shape=TINY_SHAPE)
    assert precious.read_text() == "user data" and sorted(out.iterdir()) == [precious]
    make_synthetic_dataset(3, out, n_cases=1, shape=TINY_SHAPE, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["labels", "preprocessed"]


def test_accepts_an_empty_existing_folder(tmp_path):
    make_synthetic_dataset(1, tmp_path, n_cases=2, shape=TINY_SHAPE)
    assert (tmp_path / "labels/sub_2/ses_1/label.txt").is_file()


@pytest.mark.parametrize("kwargs", [{"n_cases": 0}, {"shape": (8, 28, 24)}])
def test_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(FomoInputError):
        make_synthetic_dataset(1, tmp_path / "out", **{"shape": TINY_SHAPE, **kwargs})
    assert not (tmp_path / "out").exists()


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--task", "2", "--out", str(out), "--cases", "2", "--seed", "3", "--shape", *map(str, TINY_SHAPE)]
    assert main(args) == 0
    assert (out / "labels/sub_2/ses_1/seg.nii.gz").is_file()
    assert "Wrote 2 subjects" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main(args)
    assert refused.value.code == EXIT_BAD_INPUT
    assert "--overwrite" in capsys.readouterr().err


def test_scale_shrinks_the_voxels_not_the_arrays():
    adult = synthesize_subject(2, 3, seed=0, shape=(32, 32, 24))
    small = synthesize_subject(2, 3, seed=0, shape=(32, 32, 24), scale=0.25)
    assert np.allclose(np.asarray(small.quirks.spacing), np.asarray(adult.quirks.spacing) * 0.25)
    for a, b in zip(adult.sessions, small.sessions):
        for stem in a.images:
            np.testing.assert_array_equal(a.images[stem], b.images[stem])
        np.testing.assert_array_equal(a.lesion, b.lesion)
        assert b.target == pytest.approx(a.target * 0.25 ** 3)  # meningioma volume in ml


def test_scale_out_of_range_is_refused(tmp_path):
    with pytest.raises(FomoInputError, match="scale"):
        make_synthetic_dataset(1, tmp_path / "out", n_cases=2, scale=0)

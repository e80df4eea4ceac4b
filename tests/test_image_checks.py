"""The checks every command applies to the images it reads (nnunet_ext.dataset_conversion.image_checks), on
hand-written NIfTI headers: no image that is there is thrown away, no geometry is guessed, one NaN rule."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from fomo_files import TINY_SHAPE, brain_volume, write_broken_header, write_nifti
from nnunet_ext.dataset_conversion.fomo_reader import nifti_files, read_nifti
from nnunet_ext.dataset_conversion.image_checks import check_intensities, nifti_stem
from nnunet_ext.errors import FomoInputError
from nnunet_ext.inference.inputs import nnunet_folder_cases

RAS_AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def write_raw_nifti(path: Path, array: np.ndarray, affine: np.ndarray = RAS_AFFINE) -> Path:
    """A NIfTI written by nibabel (its header made from ``affine``)."""
    nib.save(nib.Nifti1Image(array.astype(np.float32), affine), path)
    return path


@pytest.mark.parametrize("name, stem", [("FLAIR.nii.gz", "flair"), ("flair.NII.GZ", "flair"), ("t1.nii", "t1"),
                                        ("T2s.Nii", "t2s"), ("label.txt", None), (".nii.gz", None)])
def test_nifti_stems_are_case_insensitive(name, stem):
    assert nifti_stem(name) == stem


def test_upper_case_and_uncompressed_files_are_read_not_zeroed(tmp_path):
    volume = brain_volume(TINY_SHAPE, seed=1)
    write_nifti(tmp_path / "FLAIR.nii.gz", volume)
    write_raw_nifti(tmp_path / "adc.nii", volume * 2)
    files = nifti_files(tmp_path)
    assert sorted(files) == ["adc", "flair"]
    assert np.allclose(sitk.GetArrayFromImage(read_nifti(files["adc"])).transpose(), volume * 2)


def test_two_spellings_of_one_modality_are_refused_naming_both(tmp_path):
    write_nifti(tmp_path / "FLAIR.nii.gz", brain_volume(TINY_SHAPE, seed=1))
    write_nifti(tmp_path / "flair.nii.gz", brain_volume(TINY_SHAPE, seed=2))
    with pytest.raises(FomoInputError, match="FLAIR.nii.gz and flair.nii.gz are both the flair image"):
        nifti_files(tmp_path)


@pytest.mark.parametrize("make, message", [
    (lambda p: write_broken_header(p, zooms=(0.0, 1.0, 1.0)), "every voxel size must be finite and positive"),
    (lambda p: write_broken_header(p, zooms=(-1.0, 1.0, 1.0)), "every voxel size must be finite and positive"),
    (lambda p: write_broken_header(p, zooms=(float("nan"), 1.0, 1.0)), "every voxel size must be finite"),
    (lambda p: write_broken_header(p, sform=np.diag([1.0, 0.0, 1.0, 1.0])), "singular"),
    (lambda p: write_broken_header(p, sform=[[1.0, 0.5, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]), "not orthonormal"),
    (lambda p: write_raw_nifti(p, np.ones((*TINY_SHAPE, 2))), "a series of volumes"),
    (lambda p: write_raw_nifti(p, np.ones(TINY_SHAPE[:2])), "too few dimensions"),
], ids=["zero voxel size", "negative voxel size", "NaN voxel size", "singular matrix", "sheared", "4D", "2D"])
def test_bad_geometry_is_refused_naming_the_file(tmp_path, make, message):
    path = make(tmp_path / "flair.nii.gz")
    with pytest.raises(FomoInputError, match=message) as error:
        read_nifti(path)
    assert str(path) in str(error.value)


def test_a_single_volume_4d_file_is_read_as_3d(tmp_path):
    volume = brain_volume(TINY_SHAPE, seed=3)
    image = read_nifti(write_raw_nifti(tmp_path / "t1.nii.gz", volume[..., None], affine=np.diag([2.0, 2, 3, 1])))
    assert image.GetDimension() == 3 and image.GetSize() == TINY_SHAPE and image.GetSpacing() == (2.0, 2.0, 3.0)
    assert np.allclose(sitk.GetArrayFromImage(image).transpose(), volume)


def test_one_nan_rule(tmp_path, caplog):
    array = np.ones((4, 4, 4), np.float32)
    array[0, 0, 0] = np.nan
    with pytest.raises(FomoInputError, match=r"holds 1 NaN/Inf voxels \(pass --nan-to-zero"):
        check_intensities(array.copy(), tmp_path / "x.nii.gz", nan_to_zero=False)
    fixed = array.copy()
    assert check_intensities(fixed, tmp_path / "x.nii.gz", nan_to_zero=True) == 1
    assert fixed[0, 0, 0] == 0 and "1 NaN/Inf voxels set to 0" in caplog.text


def test_all_zero_images_are_refused_and_constant_ones_warned_about(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    with pytest.raises(FomoInputError, match="every voxel is 0"):
        check_intensities(np.zeros((4, 4, 4)), tmp_path / "x.nii.gz", nan_to_zero=False)
    # in nnU-Net raw data, a zero channel is how fomo_convert stores a missing modality
    assert check_intensities(np.zeros((4, 4, 4)), tmp_path / "x.nii.gz", False, zero_means_missing=True) == 0
    assert "predicted as a missing modality" in caplog.text
    check_intensities(np.full((4, 4, 4), 7.0), tmp_path / "c.nii.gz", nan_to_zero=False)
    assert "c.nii.gz: every voxel has the same value 7" in caplog.text


# --- nnU-Net naming (fomo_predict, fomo_evaluate) ---------------------------------------------------------------

DATASET_JSON = {"channel_names": {"0": "DWI", "1": "FLAIR", "2": "ADC", "3": "SWI_or_T2star"},
                "file_ending": ".nii.gz"}


def nnunet_case(folder: Path, channels=(0, 1, 2, 3), shapes=None, volume=None) -> Path:
    folder.mkdir(exist_ok=True)
    for index, channel in enumerate(channels):
        shape = TINY_SHAPE if shapes is None else shapes[index]
        write_nifti(folder / f"case_{channel:04d}.nii.gz", brain_volume(shape, channel) if volume is None else volume)
    return folder


def test_channel_numbers_must_be_exactly_0_to_c_minus_1(tmp_path):
    folder = nnunet_case(tmp_path / "in", channels=(0, 1, 2, 4))
    with pytest.raises(FomoInputError, match=r"case case has channel files .*case_0002.nii.gz, case_0004.nii.gz; the "
                                             r"model's 4 channels \(DWI, FLAIR, ADC, SWI_or_T2star\) need exactly "
                                             r"case_0000.nii.gz, .*case_0003.nii.gz"):
        nnunet_folder_cases(folder, DATASET_JSON)
    assert len(nnunet_folder_cases(nnunet_case(tmp_path / "ok"), DATASET_JSON)) == 1


def test_channels_of_different_shapes_are_refused_naming_them(tmp_path):
    folder = nnunet_case(tmp_path / "in", shapes=[TINY_SHAPE, TINY_SHAPE, TINY_SHAPE, (12, 10, 9)])
    (case,) = nnunet_folder_cases(folder, DATASET_JSON)
    with pytest.raises(FomoInputError, match=r"channels differ in shape .*case_0003.nii.gz \[12, 10, 9\]"):
        case.read(SimpleITKIO())


def test_nnunet_cases_follow_the_nan_rule(tmp_path):
    volume = brain_volume(TINY_SHAPE, seed=1)
    volume[2, 2, 2] = np.inf
    folder = nnunet_case(tmp_path / "in", volume=volume)
    (case,) = nnunet_folder_cases(folder, DATASET_JSON)
    with pytest.raises(FomoInputError, match="case_0000.nii.gz: holds 1 NaN/Inf voxels"):
        case.read(SimpleITKIO())
    (case,) = nnunet_folder_cases(folder, DATASET_JSON, nan_to_zero=True)
    images, _ = case.read(SimpleITKIO())
    assert np.isfinite(images).all()


@pytest.mark.parametrize("stored, slope, kept", [(np.int16, None, np.int16), (np.uint8, None, np.uint8),
                                                 (np.int16, 0.5, np.float32), (np.int32, None, np.float32),
                                                 (np.float64, None, np.float32)])
def test_exact_integer_storage_is_kept_and_everything_else_read_as_float32(tmp_path, stored, slope, kept):
    """Unscaled integers of at most 16 bits keep their type (float32 holds them exactly); scaled or wider voxels
    come as float32. Either way the values are nibabel's."""
    volume = np.round(brain_volume(TINY_SHAPE, seed=3) * 100).astype(stored)
    nifti = nib.Nifti1Image(volume, RAS_AFFINE)
    if slope is not None:
        nifti.header.set_slope_inter(slope, 0.0)
    path = tmp_path / "t1.nii.gz"
    nib.save(nifti, path)
    array = sitk.GetArrayFromImage(read_nifti(path))
    assert array.dtype == kept
    np.testing.assert_array_equal(array.transpose(), nib.load(path).get_fdata(dtype=np.float32))


def test_integer_images_resample_linearly_into_float32_and_masks_keep_their_type():
    """Interpolated integers are no integers: resampling a scan onto a shifted grid gives float32 (the mean of
    two neighbours, not its truncation); nearest-neighbour resampling of a mask keeps uint8."""
    from nnunet_ext.dataset_conversion.fomo_reader import onto_grid

    scan = sitk.GetImageFromArray(np.tile(np.arange(32, dtype=np.int16), (4, 4, 1)))
    reference = sitk.Image(scan.GetSize(), sitk.sitkFloat32)
    reference.SetOrigin((0.5, 0.0, 0.0))  # half a voxel along x: every value falls between two voxels
    resampled = onto_grid(scan, Path("t1.nii.gz"), reference, Path("flair.nii.gz"), sitk.sitkLinear)
    assert resampled.GetPixelID() == sitk.sitkFloat32
    assert sitk.GetArrayViewFromImage(resampled)[0, 0, :3].tolist() == [0.5, 1.5, 2.5]
    mask = sitk.Cast(scan > 15, sitk.sitkUInt8)
    assert onto_grid(mask, Path("seg.nii.gz"), reference, Path("flair.nii.gz"),
                     sitk.sitkNearestNeighbor).GetPixelID() == sitk.sitkUInt8


def test_a_file_without_read_permission_is_refused_naming_it(tmp_path, monkeypatch):
    """Root reads every file whatever its mode, so the refusal of the operating system is simulated."""
    from nnunet_ext.dataset_conversion import image_checks

    path = write_nifti(tmp_path / "flair.nii.gz", brain_volume(TINY_SHAPE, seed=1))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(image_checks, "open", refuse, raising=False)
    with pytest.raises(FomoInputError, match="flair.nii.gz: cannot be read \\(Permission denied\\)"):
        image_checks.check_readable_file(path)

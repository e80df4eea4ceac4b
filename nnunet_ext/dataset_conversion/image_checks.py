"""Checks every image a command reads must pass, whichever command reads it (conversion, prediction, container).

One rule per class of bad input, refused with the file named:

- geometry (:func:`check_nifti_geometry`): zero, negative or non-finite voxel sizes, a singular or non-orthonormal
  direction matrix, more than three dimensions (a trailing axis of length 1 excepted). SimpleITK would otherwise
  store a zero voxel size as 1 mm without a word, or fail with a traceback.
- files (:func:`check_readable_file`): a file present under an image's name but unreadable (a dangling link, a
  folder, no read permission, empty) is refused, never taken for a missing modality.
- extent (:func:`check_volume_shape`, training data only): a single slice or a thin slab is no 3-D brain volume.
- intensities (:func:`check_intensities`): NaN/Inf voxels are refused unless the user asked for them to become 0
  (and then they are counted and reported); an all-zero image is refused (it holds no image: leave the file out
  to treat the modality as missing); a constant image is warned about.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Tuple

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from nnunet_ext.errors import FomoInputError

log = logging.getLogger(__name__)

SPATIAL_DIMS = 3
#: File endings read as NIfTI, matched case-insensitively (the challenge matches sequence names so as well).
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: Largest deviation of the direction matrix's columns from an orthonormal set (cosines; ITK uses 1e-4 for its own
#: check and fails with a traceback beyond it, we refuse earlier with the file named).
ORTHONORMAL_TOLERANCE = 1e-3
#: Option that turns NaN/Inf voxels into 0, named in the error that refuses them.
NAN_TO_ZERO_FLAG = "--nan-to-zero"
#: Fewest voxels along every axis of a scan taken as a 3-D brain volume. Fewer is a single slice or a thin slab (a
#: localiser, a mis-exported series). Deliberately far below any real scan (the thickest FOMO slices, about 6 mm,
#: still give about 25 across a brain), so that only such non-volumes are refused.
MIN_VOLUME_AXIS_VOXELS = 4


def nifti_stem(name: str) -> str | None:
    """``FLAIR.nii.gz`` / ``flair.NII`` -> ``flair``: the lower-case name without its NIfTI ending; None otherwise."""
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return lower[: -len(suffix)]
    return None


def is_nifti(path: Path) -> bool:
    return nifti_stem(path.name) is not None


def check_readable_file(path: Path) -> Path:
    """``path`` if it is a readable, non-empty file; otherwise refused with what it is instead.

    For any file found under an image's or a label's name: one that cannot be read must never pass for a missing
    modality (a zero channel) or a missing label."""
    try:
        with open(path, "rb") as stream:
            empty = not stream.read(1)
    except FileNotFoundError:
        reason = f"is a link to {os.readlink(path)}, which does not exist" if path.is_symlink() else "does not exist"
        raise FomoInputError(reason, path) from None
    except IsADirectoryError:
        raise FomoInputError("is a folder, not a file", path) from None
    except OSError as e:
        raise FomoInputError(f"cannot be read ({e.strerror or type(e).__name__})", path) from None
    if empty:
        raise FomoInputError("is empty (0 bytes)", path)
    return path


def check_volume_shape(shape: Tuple[int, ...], path: Path, channel: str | None = None) -> None:
    """Refuse a scan with fewer than :data:`MIN_VOLUME_AXIS_VOXELS` voxels along an axis (``channel`` names the image
    inside ``path`` when one file holds several)."""
    if min(shape) < MIN_VOLUME_AXIS_VOXELS:
        what = f"channel {channel} " if channel else ""
        raise FomoInputError(f"{what}has shape {tuple(shape)}: a single slice or a thin slab, not a 3-D brain volume "
                             f"(at least {MIN_VOLUME_AXIS_VOXELS} voxels along every axis)", path)


def spatial_shape(shape: Tuple[int, ...], path: Path) -> Tuple[int, ...]:
    """The 3D shape of an image of ``shape``, refusing anything but 3D (or 4D with a single volume)."""
    if len(shape) == SPATIAL_DIMS or (len(shape) == SPATIAL_DIMS + 1 and shape[-1] == 1):
        return tuple(shape[:SPATIAL_DIMS])
    raise FomoInputError(f"expected a 3D image, found shape {tuple(shape)} "
                         f"({'a series of volumes' if len(shape) > SPATIAL_DIMS else 'too few dimensions'})", path)


def _stored_voxel_sizes(image: nib.Nifti1Image, path: Path) -> np.ndarray:
    """The voxel sizes as the file stores them: nibabel's loaded header has zero sizes already set to 1 and negative
    ones to their absolute value (with a message on stdout only), SimpleITK stores a zero one as 1 mm, and so the
    header is read again without that repair."""
    with ImageOpener(path) as stream:
        raw = type(image.header).from_fileobj(stream, check=False)
    return np.asarray(raw["pixdim"][1:SPATIAL_DIMS + 1], dtype=float)


def check_nifti_geometry(image: nib.Nifti1Image, path: Path) -> Tuple[int, ...]:
    """Refuse a NIfTI whose grid is not a proper 3D grid (see the module docstring); returns its 3D shape."""
    shape = spatial_shape(image.shape, path)
    zooms = _stored_voxel_sizes(image, path)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise FomoInputError(f"voxel size {zooms.tolist()} mm: every voxel size must be finite and positive", path)
    matrix = np.asarray(image.affine, dtype=float)[:SPATIAL_DIMS, :SPATIAL_DIMS]
    lengths = np.linalg.norm(matrix, axis=0)
    if not np.all(np.isfinite(matrix)) or np.any(lengths == 0) or abs(np.linalg.det(matrix)) == 0:
        raise FomoInputError(f"singular orientation matrix {matrix.round(4).tolist()} in the header", path)
    cosines = matrix / lengths
    deviation = float(np.max(np.abs(cosines.T @ cosines - np.eye(SPATIAL_DIMS))))
    if deviation > ORTHONORMAL_TOLERANCE:
        raise FomoInputError(f"the header's direction matrix is not orthonormal (sheared: the axes' cosines deviate "
                             f"by {deviation:.4f} > {ORTHONORMAL_TOLERANCE})", path)
    return shape


def load_checked_nifti(path: Path) -> nib.Nifti1Image:
    """The NIfTI at ``path`` (header read, voxels not yet), its geometry checked."""
    try:
        image = nib.load(path)
    except Exception as e:  # nibabel raises many types for unreadable headers; all mean "not a NIfTI we can read"
        raise FomoInputError(f"cannot read the NIfTI header ({type(e).__name__}: {e})", path) from None
    check_nifti_geometry(image, path)
    return image


def apply_nan_rule(count: int, path: Path, nan_to_zero: bool, what: str = "") -> None:
    """The one NaN/Inf rule: ``count`` such voxels are refused, or with ``nan_to_zero`` reported as set to 0."""
    if not count:
        return
    if not nan_to_zero:
        raise FomoInputError(f"{what}holds {count} NaN/Inf voxels (pass {NAN_TO_ZERO_FLAG} to set them to 0)", path)
    log.warning("%s: %s%d NaN/Inf voxels set to 0 (%s)", path, what, count, NAN_TO_ZERO_FLAG)


def nonfinite_voxels_in_file(image: nib.Nifti1Image) -> int:
    """NaN/Inf voxels stored in a NIfTI: SimpleITK, and so nnU-Net's default reader, reads them as 0 silently."""
    return int(np.count_nonzero(~np.isfinite(image.get_fdata(dtype=np.float32))))


def check_intensities(array: np.ndarray, path: Path, nan_to_zero: bool, channel: str | None = None,
                      zero_means_missing: bool = False) -> int:
    """Apply the one NaN/Inf rule to ``array`` in place, refuse an all-zero image, warn on a constant one.

    ``channel`` names the image inside ``path`` when one file holds several (a .npy array).
    ``zero_means_missing``: an all-zero image is the missing modality (as ``fomo_convert`` writes one into nnU-Net
    raw data), warned about instead of refused.
    Returns the number of NaN/Inf voxels set to 0 (only with ``nan_to_zero``; otherwise they are refused).
    """
    what = f"channel {channel} " if channel else ""
    # Two passes over the voxels in the usual case: min and max propagate NaN and Inf, so finite extremes prove
    # there are none; the voxel-wise scan runs only when they are not.
    low, high = array.min(), array.max()
    count = 0
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = ~np.isfinite(array)
        count = int(np.count_nonzero(bad))
        apply_nan_rule(count, path, nan_to_zero, what)
        array[bad] = 0
        low, high = array.min(), array.max()
    if low == high == 0:
        if zero_means_missing:
            log.warning("%s: %severy voxel is 0: predicted as a missing modality", path, what)
            return count
        raise FomoInputError(f"{what}every voxel is 0: no image (leave the file out to treat the modality as "
                             "missing)", path)
    if low == high:
        log.warning("%s: %severy voxel has the same value %g: a constant image carries no anatomy", path, what,
                    float(low))
    return count

"""Binary segmentation metrics in physical units (Task 2: meningioma).

Masks are numpy arrays with the voxel spacing in millimetres given in the same axis order as the
array. SimpleITK's ``GetArrayFromImage`` returns axes (z, y, x) while ``GetSpacing`` is (x, y, z):
:func:`load_mask` reverses the spacing so that the two agree.

Surface distances are measured between boundary voxels: voxels of a mask with at least one
face-neighbour (6-connectivity in 3-D) outside it, the image border counting as outside. Distances
are Euclidean between voxel centres, from SciPy's exact distance transform with ``sampling=spacing``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike
from scipy.ndimage import binary_erosion, distance_transform_edt, find_objects, generate_binary_structure

from nnunet_ext.metrics._common import binary_mask, undefined

#: Default tolerance of the normalised surface distance, in mm. Two millimetres is two voxels at 1 mm
#: resolution: a boundary placed a voxel or two off, within the partial-volume blur of a lesion edge
#: where annotators disagree too, still counts as agreeing, while a shift of three voxels or more, which
#: changes the volume of a lesion of a few millimetres substantially, does not. A looser tolerance would
#: let the NSD of small lesions saturate near 1 and stop telling models apart.
DEFAULT_NSD_TOLERANCE_MM = 2.0

#: Percentile of the robust Hausdorff distance (HD95).
HAUSDORFF_PERCENTILE = 95.0

MM3_PER_ML = 1000.0

#: Keys of :func:`segmentation_metrics` that are performance metrics, averaged over cases and
#: bootstrapped; the remaining keys are the volumes.
SEGMENTATION_METRICS = ("dice", "iou", "hd95", "assd", "nsd")


def _checked_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """Check one positive, finite spacing per array axis."""
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(np.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be {ndim} positive numbers in mm (array axis order), got {spacing}")
    return values


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a binary mask: voxels with at least one face-neighbour outside the mask.

    Voxels on the image border count as boundary (the outside of the image is background).

    Parameters
    ----------
    mask : ndarray of bool
        Binary mask of any dimension.

    Returns
    -------
    ndarray of bool
        Same shape as ``mask``; True on the boundary. Empty for an empty mask.
    """
    face_neighbours = generate_binary_structure(mask.ndim, 1)
    return mask & ~binary_erosion(mask, structure=face_neighbours, border_value=0)


def _union_crop(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``a | b`` grown by one voxel (clipped at the image border).

    Distance transforms on the crop give the same surface distances as on the whole image, because
    every surface voxel lies inside it, and the one-voxel margin keeps voxels on the crop's edge from
    being taken for boundary. For a small lesion in a brain volume this is a large saving.
    """
    (box,) = find_objects((a | b).astype(np.uint8))
    return tuple(slice(max(s.start - 1, 0), min(s.stop + 1, size)) for s, size in zip(box, a.shape))


def surface_distances(
    reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each boundary voxel of one mask to the nearest boundary voxel of the other.

    Parameters
    ----------
    reference, prediction : ndarray of bool
        Non-empty binary masks of the same shape.
    spacing : sequence of float
        Voxel size in mm along each array axis.

    Returns
    -------
    reference_to_prediction : ndarray of float
        One distance per boundary voxel of ``reference``.
    prediction_to_reference : ndarray of float
        One distance per boundary voxel of ``prediction``.
    """
    crop = _union_crop(reference, prediction)
    surface_ref = surface_voxels(reference[crop])
    surface_pred = surface_voxels(prediction[crop])
    # The distance transform of the complement of a surface is, at every voxel, the distance to that surface.
    to_pred = distance_transform_edt(~surface_pred, sampling=spacing)
    to_ref = distance_transform_edt(~surface_ref, sampling=spacing)
    return to_pred[surface_ref], to_ref[surface_pred]


def segmentation_metrics(
    reference: ArrayLike,
    prediction: ArrayLike,
    spacing: Sequence[float],
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> dict[str, float]:
    """Overlap, surface-distance and volume metrics of one predicted mask against its reference.

    With R and P the reference and predicted voxel sets, and d(R->P) the distances from R's boundary
    voxels to P's boundary (:func:`surface_distances`):

    - dice = 2 |R & P| / (|R| + |P|)
    - iou (Jaccard) = |R & P| / |R | P|
    - hd95 (mm): the larger of the 95th percentiles of d(R->P) and d(P->R), a Hausdorff distance
      robust to a few outlying voxels
    - assd (mm): average symmetric surface distance, the mean of d(R->P) and d(P->R) pooled
    - nsd: normalised surface distance, the fraction of boundary voxels of both masks that lie within
      ``nsd_tolerance_mm`` of the other mask's boundary (boundary voxels stand in for surface area)
    - reference_volume_ml, predicted_volume_ml: voxel count times voxel volume

    Empty masks:

    - both empty: dice = iou = nsd = 1 and hd95 = assd = 0. The prediction agrees with the
      reference that there is no lesion; scoring it 0 or NaN would punish or hide a correct answer.
    - exactly one empty (a missed lesion or a false alarm): dice = iou = nsd = 0, the worst values,
      and hd95 = assd = NaN. A distance to an empty set does not exist; infinity would make every mean
      infinite (and is not valid JSON), and a stand-in such as the image diagonal depends on the field
      of view. NaN is written as null in JSON and is left out of means over cases, which count it.

    Parameters
    ----------
    reference, prediction : array-like of {0, 1} or bool
        Binary masks of the same shape (any dimension).
    spacing : sequence of float
        Voxel size in mm along each array axis (anisotropic spacing is taken into account).
    nsd_tolerance_mm : float, default=2.0
        Tolerance of the NSD in mm; see :data:`DEFAULT_NSD_TOLERANCE_MM` for the choice.

    Returns
    -------
    dict
        The metrics of :data:`SEGMENTATION_METRICS` and the two volumes in ml.
    """
    ref = binary_mask(reference, "reference")
    pred = binary_mask(prediction, "prediction")
    if ref.shape != pred.shape:
        raise ValueError(f"reference and prediction differ in shape: {ref.shape} != {pred.shape}")
    spacing = _checked_spacing(spacing, ref.ndim)
    if not (np.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise ValueError(f"nsd_tolerance_mm must be a non-negative number, got {nsd_tolerance_mm}")

    n_ref, n_pred = int(ref.sum()), int(pred.sum())
    n_both = int(np.count_nonzero(ref & pred))
    ml_per_voxel = float(np.prod(spacing)) / MM3_PER_ML
    volumes = {"reference_volume_ml": n_ref * ml_per_voxel, "predicted_volume_ml": n_pred * ml_per_voxel}

    if n_ref == 0 and n_pred == 0:
        return {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "assd": 0.0, "nsd": 1.0, **volumes}
    overlap = {"dice": 2 * n_both / (n_ref + n_pred), "iou": n_both / (n_ref + n_pred - n_both)}
    if n_ref == 0 or n_pred == 0:
        empty = "reference" if n_ref == 0 else "prediction"
        reason = f"the {empty} mask is empty"
        distances = {"hd95": undefined("hd95", reason), "assd": undefined("assd", reason)}
        return {**overlap, **distances, "nsd": 0.0, **volumes}

    ref_to_pred, pred_to_ref = surface_distances(ref, pred, spacing)
    pooled = np.concatenate([ref_to_pred, pred_to_ref])
    return {
        **overlap,
        "hd95": float(
            max(np.percentile(ref_to_pred, HAUSDORFF_PERCENTILE), np.percentile(pred_to_ref, HAUSDORFF_PERCENTILE))
        ),
        "assd": float(pooled.mean()),
        "nsd": float(np.mean(pooled <= nsd_tolerance_mm)),
        **volumes,
    }


def load_mask(path: str | Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a mask image (NIfTI or any SimpleITK format) as an array with its spacing in array order.

    Parameters
    ----------
    path : str or Path
        Image file; its values must be 0 and 1 for :func:`segmentation_metrics`.

    Returns
    -------
    mask : ndarray
        Voxel values, axes (z, y, x) as SimpleITK gives them.
    spacing : tuple of float
        Voxel size in mm along (z, y, x), i.e. SimpleITK's (x, y, z) spacing reversed.
    """
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))

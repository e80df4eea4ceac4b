"""Segmentation metrics against scikit-learn (overlap) and brute-force point-set distances (surfaces)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import SimpleITK as sitk
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import f1_score, jaccard_score

from nnunet_ext.evaluation.report import json_safe
from nnunet_ext.metrics import load_mask, segmentation_metrics


def _surface_points_brute_force(mask: np.ndarray, spacing) -> np.ndarray:
    """Physical coordinates (mm) of voxels with a face-neighbour outside the mask or the image, by looping."""
    points = []
    for index in zip(*np.nonzero(mask)):
        for axis, step in itertools.product(range(mask.ndim), (-1, 1)):
            neighbour = list(index)
            neighbour[axis] += step
            if not 0 <= neighbour[axis] < mask.shape[axis] or not mask[tuple(neighbour)]:
                points.append(np.array(index) * spacing)
                break
    return np.array(points)


def _directed_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each point of a, the distance to the nearest point of b (all pairs)."""
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1)).min(axis=1)


def _random_blob(rng: np.random.Generator, shape, centre_shift) -> np.ndarray:
    """A noisy ellipsoid-like blob, with holes and bumps so that surfaces are irregular."""
    grid = np.indices(shape).astype(float)
    centre = np.array(shape) / 2 + centre_shift
    radius2 = sum(((g - c) / (s / 4)) ** 2 for g, c, s in zip(grid, centre, shape))
    return radius2 + 0.6 * rng.random(shape) < 1.3


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.7, 1.3)])
def test_metrics_match_brute_force(seed, spacing):
    rng = np.random.default_rng(seed)
    shape = (9, 12, 11)
    reference = _random_blob(rng, shape, (0, 0, 0))
    prediction = _random_blob(rng, shape, (1, -1, 2))
    m = segmentation_metrics(reference, prediction, spacing, nsd_tolerance_mm=2.0)

    assert m["dice"] == pytest.approx(f1_score(reference.ravel(), prediction.ravel()))
    assert m["iou"] == pytest.approx(jaccard_score(reference.ravel(), prediction.ravel()))
    voxel_ml = np.prod(spacing) / 1000
    assert m["reference_volume_ml"] == pytest.approx(reference.sum() * voxel_ml)
    assert m["predicted_volume_ml"] == pytest.approx(prediction.sum() * voxel_ml)

    surface_ref = _surface_points_brute_force(reference, spacing)
    surface_pred = _surface_points_brute_force(prediction, spacing)
    ref_to_pred = _directed_distances(surface_ref, surface_pred)
    pred_to_ref = _directed_distances(surface_pred, surface_ref)
    pooled = np.concatenate([ref_to_pred, pred_to_ref])
    assert m["hd95"] == pytest.approx(max(np.percentile(ref_to_pred, 95), np.percentile(pred_to_ref, 95)))
    assert m["assd"] == pytest.approx(pooled.mean())
    assert m["nsd"] == pytest.approx(np.mean(pooled <= 2.0))


def test_masks_touching_the_image_border_and_2d():
    reference = np.zeros((6, 7), dtype=bool)
    reference[:3, :4] = True  # touches two image borders
    prediction = np.zeros_like(reference)
    prediction[1:5, 2:7] = True
    spacing = (0.5, 2.0)
    m = segmentation_metrics(reference, prediction, spacing)
    ref_to_pred = _directed_distances(
        _surface_points_brute_force(reference, spacing), _surface_points_brute_force(prediction, spacing)
    )
    pred_to_ref = _directed_distances(
        _surface_points_brute_force(prediction, spacing), _surface_points_brute_force(reference, spacing)
    )
    assert m["assd"] == pytest.approx(np.concatenate([ref_to_pred, pred_to_ref]).mean())


def test_shift_along_an_anisotropic_axis_is_measured_in_mm():
    reference = np.zeros((12, 12, 12), dtype=bool)
    reference[3:7, 3:7, 3:7] = True
    prediction = np.roll(reference, 2, axis=0)  # two slices of 3 mm
    m = segmentation_metrics(reference, prediction, (3.0, 1.0, 1.0), nsd_tolerance_mm=5.9)
    assert m["hd95"] == pytest.approx(6.0)
    assert m["dice"] == pytest.approx(0.5)
    assert m["nsd"] < 1
    assert segmentation_metrics(reference, prediction, (3.0, 1.0, 1.0), nsd_tolerance_mm=6.0)["nsd"] == 1.0


def test_identical_masks():
    mask = np.zeros((5, 5, 5), dtype=np.uint8)
    mask[1:4, 1:4, 1:4] = 1
    m = segmentation_metrics(mask, mask, (1.0, 1.0, 1.0))
    assert (m["dice"], m["iou"], m["hd95"], m["assd"], m["nsd"]) == (1.0, 1.0, 0.0, 0.0, 1.0)
    assert m["reference_volume_ml"] == pytest.approx(27 / 1000)


def test_both_empty_is_perfect_agreement():
    empty = np.zeros((4, 4, 4), dtype=bool)
    m = segmentation_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert (m["dice"], m["iou"], m["hd95"], m["assd"], m["nsd"]) == (1.0, 1.0, 0.0, 0.0, 1.0)
    assert m["reference_volume_ml"] == m["predicted_volume_ml"] == 0.0


@pytest.mark.parametrize("empty_one", ["reference", "prediction"])
def test_one_empty_mask_scores_zero_overlap_and_undefined_distances(empty_one):
    lesion = np.zeros((4, 4, 4), dtype=bool)
    lesion[1:3, 1:3, 1:3] = True
    empty = np.zeros_like(lesion)
    masks = (empty, lesion) if empty_one == "reference" else (lesion, empty)
    with pytest.warns(UndefinedMetricWarning, match=f"the {empty_one} mask is empty"):
        m = segmentation_metrics(*masks, (1.0, 1.0, 1.0))
    assert (m["dice"], m["iou"], m["nsd"]) == (0.0, 0.0, 0.0)
    assert np.isnan(m["hd95"]) and np.isnan(m["assd"])
    assert json.loads(json.dumps(json_safe(m), allow_nan=False))["hd95"] is None


@pytest.mark.parametrize(
    "reference, prediction, spacing, message",
    [
        (np.zeros((3, 3)), np.zeros((3, 4)), (1, 1), "shape"),
        (np.full((3, 3), 2), np.zeros((3, 3)), (1, 1), "binary"),
        (np.zeros((3, 3)), np.zeros((3, 3)), (1,), "spacing"),
        (np.zeros((3, 3)), np.zeros((3, 3)), (1, 0), "spacing"),
    ],
)
def test_invalid_input_is_refused(reference, prediction, spacing, message):
    with pytest.raises(ValueError, match=message):
        segmentation_metrics(reference, prediction, spacing)


def test_negative_tolerance_is_refused():
    mask = np.ones((2, 2), dtype=bool)
    with pytest.raises(ValueError, match="nsd_tolerance_mm"):
        segmentation_metrics(mask, mask, (1, 1), nsd_tolerance_mm=-1)


def test_load_mask_reverses_simpleitk_spacing(tmp_path):
    array = np.zeros((4, 5, 6), dtype=np.uint8)  # (z, y, x)
    array[1, 2, 3] = 1
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 3.0))  # (x, y, z)
    sitk.WriteImage(image, str(tmp_path / "mask.nii.gz"))
    mask, spacing = load_mask(tmp_path / "mask.nii.gz")
    assert mask.shape == (4, 5, 6) and mask[1, 2, 3] == 1
    assert spacing == pytest.approx((3.0, 0.9, 0.8))

"""Every figure renders to a non-blank PNG, written atomically, including on degenerate input."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.image import imread

from nnunet_ext.evaluation.plots import (
    plot_bland_altman,
    plot_confusion_matrix,
    plot_dice_per_case,
    plot_predicted_vs_true,
    plot_roc_curves,
    plot_segmentation_overlay,
    plot_training_curves,
)
from nnunet_ext.metrics import classification_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_PNG_BYTES = 10_000  # an empty axes box at our DPI is well under this


def _assert_picture(path: Path, expected: Path) -> None:
    """The file is a PNG of real content, and no temporary file is left beside it."""
    assert path == expected
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > MIN_PNG_BYTES
    pixels = imread(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.fixture
def classification_data():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 15)
    return y, np.clip(0.3 * y + 0.7 * rng.random(30), 0, 1)


@pytest.fixture
def age_data():
    rng = np.random.default_rng(1)
    age = rng.uniform(20, 80, 40)
    return age, age + rng.normal(2, 5, 40)


def test_roc_curves_with_folds_ensemble_and_a_one_class_fold(tmp_path, classification_data):
    y, p = classification_data
    curves = {f"fold {i}": (y[i::3], p[i::3]) for i in range(3)}
    curves["fold 3"] = (np.zeros(4, dtype=int), p[:4])  # one class: listed, not drawn
    curves["ensemble"] = (y, p)
    out = tmp_path / "roc.png"
    _assert_picture(plot_roc_curves(curves, out, threshold=0.5), out)


def test_confusion_matrix(tmp_path, classification_data):
    out = tmp_path / "sub" / "cm.png"  # missing folders are created
    metrics = classification_metrics(*classification_data)
    _assert_picture(plot_confusion_matrix(metrics, out, ("no infarct", "infarct"), title="threshold 0.5"), out)


def test_predicted_vs_true_and_bland_altman(tmp_path, age_data):
    _assert_picture(plot_predicted_vs_true(*age_data, tmp_path / "scatter.png"), tmp_path / "scatter.png")
    _assert_picture(plot_bland_altman(*age_data, tmp_path / "ba.png"), tmp_path / "ba.png")


def test_regression_plots_with_constant_predictions(tmp_path, age_data):
    age, _ = age_data
    constant = np.full_like(age, 50.0)
    _assert_picture(plot_predicted_vs_true(age, constant, tmp_path / "s.png"), tmp_path / "s.png")
    _assert_picture(plot_bland_altman(age, constant, tmp_path / "b.png"), tmp_path / "b.png")


def test_dice_per_case(tmp_path):
    rng = np.random.default_rng(2)
    per_model = {f"fold {i}": rng.beta(8, 2, 8) for i in range(5)}
    per_model["ensemble"] = np.append(rng.beta(9, 2, 20), np.nan)
    out = tmp_path / "dice.png"
    _assert_picture(plot_dice_per_case(per_model, out), out)


def _phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = np.indices((24, 40, 40))
    image = 100 * np.exp(-((y - 20) ** 2 + (x - 20) ** 2) / 300) + np.random.default_rng(3).normal(0, 3, z.shape)
    reference = 4 * (z - 12) ** 2 + (y - 18) ** 2 + (x - 24) ** 2 < 40
    reference |= (z - 5) ** 2 + (y - 30) ** 2 + (x - 8) ** 2 < 3  # a second, smaller lesion
    prediction = 4 * (z - 13) ** 2 + (y - 19) ** 2 + (x - 22) ** 2 < 45
    return image, reference, prediction


def test_segmentation_overlay(tmp_path):
    image, reference, prediction = _phantom()
    out = tmp_path / "overlay.png"
    _assert_picture(plot_segmentation_overlay(image, reference, prediction, (2.5, 1.0, 1.0), out, title="case"), out)


def test_segmentation_overlay_with_empty_masks(tmp_path):
    image, _, _ = _phantom()
    empty = np.zeros(image.shape, dtype=bool)
    out = tmp_path / "overlay_empty.png"
    _assert_picture(plot_segmentation_overlay(image, empty, empty, (1.0, 1.0, 1.0), out), out)


def test_segmentation_overlay_refuses_mismatched_shapes(tmp_path):
    image, reference, _ = _phantom()
    with pytest.raises(ValueError, match="3-D image"):
        plot_segmentation_overlay(image, reference[:-1], reference, (1, 1, 1), tmp_path / "x.png")


def test_training_curves(tmp_path):
    epochs = np.arange(1, 31)
    out = tmp_path / "training.png"
    mae = 10 / np.sqrt(epochs)
    path = plot_training_curves(
        epochs, 1 / epochs, 1.2 / epochs, mae, out, metric_name="Validation MAE (years)", higher_is_better=False
    )
    _assert_picture(path, out)


def test_training_curves_refuse_ragged_series(tmp_path):
    with pytest.raises(ValueError, match="one value per epoch"):
        plot_training_curves([1, 2], [1.0], [1.0, 0.5], [0.1, 0.2], tmp_path / "t.png")


def test_figures_ignore_global_style_changes(tmp_path):
    """nnU-Net's training logger sets seaborn's font_scale=2.5 globally; our figures must not inherit it."""
    curves = {"ensemble": ([0, 1, 1, 0], [0.1, 0.9, 0.8, 0.3])}
    before = plot_roc_curves(curves, tmp_path / "before.png").read_bytes()
    with matplotlib.rc_context({"font.size": 30, "axes.facecolor": "#EAEAF2"}):
        during = plot_roc_curves(curves, tmp_path / "during.png").read_bytes()
    assert during == before

"""Prediction under ``nnUNet_compile=true``: nnU-Net's predictor wraps the network in ``torch.compile``, whose
state-dict keys carry ``_orig_mod.``; each fold's plain weights must still load, and the compiled network must
predict what the plain one does. One case, one fold, no mirroring. Inductor's code generation costs 10-30 s a
network on a CPU, so it runs for one model; the others compile with the ``eager`` backend, which builds the same
wrapper (the same ``_orig_mod.`` keys, the same dynamo tracing) without generating code."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from trained_models import use_model

from nnunet_ext.inference.predict import main as fomo_predict

#: Tolerance between the compiled and the plain network's outputs (inductor may fuse operations differently).
COMPILED_TOLERANCE = 1e-4
REAL_COMPILE = torch.compile


def predict_one_case(model, tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch, compiled: bool,
                     backend: str = "inductor") -> Path:
    """fomo_predict on the model's first test case with fold 0 and no mirroring, compiled (by ``backend``) or not."""
    images = tmp_path / "images"
    if not images.is_dir():
        images.mkdir()
        for image in model.test_images(sorted(model.test_targets)[0]):
            shutil.copy(image, images / image.name)
    use_model(monkeypatch, model)
    monkeypatch.setenv("nnUNet_compile", "true" if compiled else "false")
    monkeypatch.setattr(torch, "compile", functools.partial(REAL_COMPILE, backend=backend))
    output = tmp_path / name
    assert fomo_predict(["-i", str(images), "-o", str(output), "-d", model.dataset_id, "-tr", model.trainer,
                         "-f", "0", "-device", "cpu", "--disable_tta"]) == 0
    return output


@pytest.mark.parametrize("task_type, backend", [("classification", "inductor"), ("regression", "eager")])
def test_case_level_prediction_under_nnunet_compile(task_type: str, backend: str, trained_model, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model(task_type)
    plain = predict_one_case(model, tmp_path, "plain", monkeypatch, compiled=False)
    compiled = predict_one_case(model, tmp_path, "compiled", monkeypatch, compiled=True, backend=backend)
    (expected,), (value,) = (json.loads((folder / "predictions.json").read_text()) for folder in (plain, compiled))
    assert value["prediction"] == pytest.approx(expected["prediction"], rel=COMPILED_TOLERANCE, abs=COMPILED_TOLERANCE)


def test_segmentation_under_nnunet_compile(trained_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model("segmentation")
    plain = predict_one_case(model, tmp_path, "plain", monkeypatch, compiled=False)
    compiled = predict_one_case(model, tmp_path, "compiled", monkeypatch, compiled=True, backend="eager")
    (mask,) = compiled.glob("*.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(mask))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(plain / mask.name))))

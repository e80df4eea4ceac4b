"""A tiny-width FOMO26 ResEnc-B checkpoint through ``fomo_plan_and_preprocess --model resenc_unet_b``, a run shorter
than ``_debug`` (1 epoch of 1 training and 1 validation iteration; CPU) and ``fomo_predict`` with the trained fold,
for each of the three tasks, from the checkpoint in its two layouts: FOMO26's Lightning file and an nnssl release
checkpoint of the same network (as nnssl's ResEnc-L: ``network_weights`` in DNA's names, with its adaptation plan);
segmentation from both, each case-level task from one. The 6-stage network needs 64^3 patches, so every step costs
more than the UNet-B tests' 32^3: the final validation (nnU-Net's, mirrored 8 times) is left to the UNet-B trainer
tests, which share its code, and prediction runs without test-time mirroring. Its run under DDP is in ``test_ddp``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import case_level_datasets
import trainer_datasets
from resenc_datasets import MODEL, STARTING_FILTERS, plan_resenc
from nnunet_ext.inference.predict import main as fomo_predict
from nnunet_ext.pretrained.resenc_layout import FOMO26, NNSSL
from nnunet_ext.pretrained.testing import make_resenc_state_dict, resenc_layout_for
from nnunet_ext.trainers import TRAINERS, FomoClassificationTrainer, FomoFinetuneTrainer, FomoRegressionTrainer
from nnunet_ext.trainers.pretrained_loading import TRANSFER_REPORT_FILENAME
from nnunet_ext.trainers.variants import ShortSchedule

CONFIGURATION = "3d_fullres"
CPU = torch.device("cpu")


def _tiny_run(family: type, monkeypatch: pytest.MonkeyPatch) -> type:
    """``family`` for 1 epoch of 1 training and 1 validation iteration, registered for the test as nnU-Net's predictor
    finds every variant (by its name, ``TRAINERS``)."""
    trainer = type(f"{family.__name__}_tiny", (ShortSchedule, family),
                   {"epochs": 1, "iterations": 1, "val_iterations": 1, "__module__": __name__})
    monkeypatch.setitem(TRAINERS, trainer.__name__, trainer)
    return trainer


def _predict(fold: Path, raw: Path, case: str, out: Path) -> None:
    """``fomo_predict`` of one training case of ``raw`` with the trained ``fold`` alone, without mirroring."""
    images = out.parent / "images"
    images.mkdir()
    for image in raw.glob(f"imagesTr/{case}_*.nii.gz"):
        (images / image.name).symlink_to(image)
    dataset_id = raw.name[len("Dataset"):len("Dataset") + 3]
    assert fomo_predict(["-i", str(images), "-o", str(out), "-d", dataset_id, "-tr", fold.parent.name.split("__")[0],
                         "-f", "0", "-device", "cpu", "--disable_tta"]) == 0


def _check_fold(fold: Path, task_type: str, naming: str = FOMO26) -> None:
    """The fold folder of a finished ``_debug`` run: the network is FomoResEncUNet and took the whole checkpoint."""
    report = json.loads((fold / TRANSFER_REPORT_FILENAME).read_text())
    assert report["complete"] and report["network"]["family"] == "resenc"
    assert report["network"]["task_type"] == task_type
    assert report["layout"]["blocks_per_stage"] == [1, 3, 4, 6, 6, 6] and report["layout"]["naming"] == naming
    n_layout_tensors = len(make_resenc_state_dict(resenc_layout_for(MODEL, STARTING_FILTERS), naming))
    # every checkpoint tensor is accounted for: loaded, adapted (the stem) or reported unused
    sources = [entry["source"] for entry in report["entries"] if entry["source"] is not None]
    assert len(sources) == len(set(sources)) == n_layout_tensors
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["init_args"]["plans"]["configurations"][CONFIGURATION]["architecture"]["network_class_name"] \
        == "nnunet_ext.networks.FomoResEncUNet"
    assert all(torch.isfinite(t).all() for t in final["network_weights"].values() if t.is_floating_point())


# The layout only decides how the encoder loads, the task only the head: each task runs from one layout, and each
# layout is loaded by one case-level task (the segmentation test below runs both layouts).
@pytest.mark.parametrize("task_type, family, metric, naming", [
    ("classification", FomoClassificationTrainer, "val_auroc", FOMO26),
    ("regression", FomoRegressionTrainer, "val_mae", NNSSL)])
def test_case_level_debug_run_from_a_resenc_checkpoint_then_prediction(task_type: str, family: type, metric: str,
                                                                        naming: str, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    task = case_level_datasets.TASKS[task_type]
    dataset = case_level_datasets.CaseLevelDataset(tmp_path, task_type, task["dataset_id"],
                                                   case_level_datasets.case_targets(task_type, 6), n_folds=3)
    case_level_datasets.make_raw_dataset(dataset)
    checkpoint = plan_resenc(tmp_path, dataset.dataset_id, monkeypatch, naming)
    plans = json.loads((tmp_path / "nnUNet_preprocessed" / dataset.name / "nnUNetPlans.json").read_text())
    architecture = plans["configurations"][CONFIGURATION]["architecture"]
    assert architecture["arch_kwargs"]["head_pool_levels"] == [5]  # the bottleneck of 6 stages, FOMO26's head
    assert plans["configurations"][CONFIGURATION]["fomo"]["pretrained"]["model"] == MODEL
    trainer = case_level_datasets.build_trainer(dataset, _tiny_run(family, monkeypatch))
    trainer.run_training()
    fold = Path(trainer.output_folder)
    _check_fold(fold, task_type, naming)
    logged = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    assert len(logged[metric]) == 1  # the whole-case validation of the epoch ran on the padded 6-stage input
    assert checkpoint.is_file()

    case = sorted(dataset.targets)[0]
    _predict(fold, tmp_path / "nnUNet_raw" / dataset.name, case, tmp_path / "predicted")
    (record,) = json.loads((tmp_path / "predicted" / "predictions.json").read_text())
    assert record["case"] == case and math.isfinite(record["prediction"])
    assert 0 <= record["prediction"] <= 1 if task_type == "classification" else record["prediction"] > 0


@pytest.mark.parametrize("naming", [FOMO26, NNSSL])
def test_segmentation_debug_run_from_a_resenc_checkpoint(naming: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    raw = tmp_path / "nnUNet_raw" / trainer_datasets.DATASET_NAME
    trainer_datasets.make_raw_dataset(raw)
    plan_resenc(tmp_path, trainer_datasets.DATASET_ID, monkeypatch, naming)
    preprocessed = tmp_path / "nnUNet_preprocessed" / trainer_datasets.DATASET_NAME
    trainer = _tiny_run(FomoFinetuneTrainer, monkeypatch)(
        {**json.loads((preprocessed / "nnUNetPlans.json").read_text()), "continue_training": False}, CONFIGURATION,
        0, json.loads((preprocessed / "dataset.json").read_text()), CPU)
    trainer.run_training()
    fold = Path(trainer.output_folder)
    _check_fold(fold, "segmentation", naming)
    network = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    assert network["decoder.seg_layers.4.weight"].shape == (2, STARTING_FILTERS, 1, 1, 1)  # background + lesion

    case = sorted(p.name[: -len(".nii.gz")] for p in (raw / "labelsTr").glob("*.nii.gz"))[0]
    _predict(fold, raw, case, tmp_path / "predicted")
    mask = sitk.ReadImage(str(tmp_path / "predicted" / f"{case}.nii.gz"))
    image = sitk.ReadImage(str(raw / "imagesTr" / f"{case}_0000.nii.gz"))
    assert mask.GetSize() == image.GetSize() and mask.GetSpacing() == image.GetSpacing()
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}

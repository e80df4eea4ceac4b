"""A tiny-width FOMO26 ResEnc-B checkpoint through ``fomo_plan_and_preprocess --model resenc_unet_b``, a run shorter
than ``_debug`` (1 epoch of 1 training and 1 validation iteration; CPU) and ``fomo_predict`` with the trained fold,
for each of the three tasks, from the checkpoint in its two layouts: FOMO26's Lightning file and an nnssl release
checkpoint of the same network (as nnssl's ResEnc-L: ``network_weights`` in DNA's names, with its adaptation plan).
The layout only decides how the encoder loads, the task only the head: each task runs from one layout here, and each
layout is loaded by one case-level task; segmentation from FOMO26's layout runs under DDP in ``test_ddp``, with the
same checks of its fold and prediction. The 6-stage network needs 64^3 patches, so every step costs more than the
UNet-B tests' 32^3: the final validation (nnU-Net's, mirrored 8 times) is left to the UNet-B trainer tests, which
share its code, and prediction runs without test-time mirroring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import case_level_datasets
import trainer_datasets
from resenc_datasets import CONFIGURATION, MODEL, check_fold, check_segmentation_fold, plan_resenc, predict_one_case
from nnunet_ext.pretrained.resenc_layout import FOMO26, NNSSL
from nnunet_ext.trainers import TRAINERS, FomoClassificationTrainer, FomoFinetuneTrainer, FomoRegressionTrainer
from nnunet_ext.trainers.variants import ShortSchedule

CPU = torch.device("cpu")


def _tiny_run(family: type, monkeypatch: pytest.MonkeyPatch) -> type:
    """``family`` for 1 epoch of 1 training and 1 validation iteration, registered for the test as nnU-Net's predictor
    finds every variant (by its name, ``TRAINERS``)."""
    trainer = type(f"{family.__name__}_tiny", (ShortSchedule, family),
                   {"epochs": 1, "iterations": 1, "val_iterations": 1, "__module__": __name__})
    monkeypatch.setitem(TRAINERS, trainer.__name__, trainer)
    return trainer


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
    check_fold(fold, task_type, naming)
    logged = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    assert len(logged[metric]) == 1  # the whole-case validation of the epoch ran on the padded 6-stage input
    assert checkpoint.is_file()

    case = sorted(dataset.targets)[0]
    predict_one_case(fold, tmp_path / "nnUNet_raw" / dataset.name, case, tmp_path / "predicted")
    (record,) = json.loads((tmp_path / "predicted" / "predictions.json").read_text())
    assert record["case"] == case and math.isfinite(record["prediction"])
    assert 0 <= record["prediction"] <= 1 if task_type == "classification" else record["prediction"] > 0


def test_segmentation_debug_run_from_an_nnssl_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    raw = tmp_path / "nnUNet_raw" / trainer_datasets.DATASET_NAME
    trainer_datasets.make_raw_dataset(raw)
    plan_resenc(tmp_path, trainer_datasets.DATASET_ID, monkeypatch, NNSSL)
    preprocessed = tmp_path / "nnUNet_preprocessed" / trainer_datasets.DATASET_NAME
    trainer = _tiny_run(FomoFinetuneTrainer, monkeypatch)(
        {**json.loads((preprocessed / "nnUNetPlans.json").read_text()), "continue_training": False}, CONFIGURATION,
        0, json.loads((preprocessed / "dataset.json").read_text()), CPU)
    trainer.run_training()
    check_segmentation_fold(Path(trainer.output_folder), raw, tmp_path / "predicted", NNSSL)

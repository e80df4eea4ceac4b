"""The trainers under nnU-Net's ``-num_gpus 2`` path (``run_training.run_ddp``), two gloo ranks on the CPU (see
``ddp_gloo``): training proceeds, the ranks hold identical weights at the end and log the same validation metric,
the case-level validation is split over the ranks, and a batch too small for the ranks is refused before anything
trains. Pretraining's run is in ``test_pretraining``, the torchrun path in ``test_ddp_torchrun``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from case_level_datasets import CaseLevelDataset, planned_case_level_dataset
from ddp_gloo import assert_ranks_agree, train_ddp_on_cpu
from nnunet_ext.env import EXT_TRAINER_VAR, TRAINER_LOOKUP_FOLDER
from nnunet_ext.errors import FomoInputError
from nnunet_ext.trainers import TRAINERS, FomoFinetuneTrainer, base
from resenc_datasets import check_segmentation_fold, plan_resenc
from trainer_datasets import (
    CONFIGURATION,
    DATASET_ID,
    DATASET_NAME,
    TRAINING_ENV,
    PlannedDataset,
    make_raw_dataset,
    planned_segmentation_dataset,
    use_dataset,
)

#: Deep supervision on (every decoder output trained) with layer-wise learning-rate decay (one parameter group per
#: encoder level; the variant whose ranks once ended with different weights), the encoder frozen for the first of
#: ``_debug``'s two epochs: both phases in one short run.
DEEP_SUPERVISION_TRAINER = "FomoFinetuneTrainer_DeepSupervision_LLRD_FrozenEncoderUnfreeze1_debug"
#: The default segmentation trainer for one epoch of two steps, for the residual encoder's 64^3 patches.
RESENC_TRAINER = "FomoFinetuneTrainer_tinyDDP"
#: Folder where :func:`record_validated_cases` writes what each rank validated.
RECORD_ENV = "FOMO_TEST_DDP_RECORD"
REGRESSION_CASES = 10
#: Enough for two validation folds that hold both classes.
CLASSIFICATION_CASES = 10
#: The regression network pools the first encoder level only (``--head-pool-levels 1``): the deeper stages get no
#: gradient, which DDP must be told to expect.
SHALLOW_HEAD_LEVELS = [1]


def _env(dataset_env: dict, results: Path) -> dict:
    return {**dataset_env, **TRAINING_ENV, "nnUNet_results": str(results), "nnUNet_compile": "false",
            EXT_TRAINER_VAR: str(TRAINER_LOOKUP_FOLDER)}


def register_deep_supervision_trainer() -> None:
    """(In every rank) :data:`DEEP_SUPERVISION_TRAINER`, found by nnU-Net's lookup like every variant."""
    from nnunet_ext.trainers import TRAINERS, FomoFinetuneTrainer_DeepSupervision_debug
    from nnunet_ext.trainers.variants import FrozenEncoder, LayerwiseLRDecay

    TRAINERS[DEEP_SUPERVISION_TRAINER] = type(DEEP_SUPERVISION_TRAINER, (
        FrozenEncoder, LayerwiseLRDecay, FomoFinetuneTrainer_DeepSupervision_debug), {"unfreeze_epoch": 1})


def resenc_trainer() -> type:
    """:data:`RESENC_TRAINER`: the default segmentation trainer for one epoch of two steps."""
    from nnunet_ext.trainers.variants import ShortSchedule

    return type(RESENC_TRAINER, (ShortSchedule, FomoFinetuneTrainer),
                {"epochs": 1, "iterations": 2, "val_iterations": 1})


def register_resenc_trainer() -> None:
    """(In every rank) :data:`RESENC_TRAINER`, found by nnU-Net's lookup like every variant."""
    TRAINERS[RESENC_TRAINER] = resenc_trainer()


def record_validated_cases() -> None:
    """(In every rank) each whole-case validation appends the network's type and its cases to a file of the rank."""
    import torch.distributed as dist

    import nnunet_ext.trainers.case_level as case_level

    predict = case_level.predict_cases

    def recording(network, volumes, *args, **kwargs):
        with open(Path(os.environ[RECORD_ENV]) / f"rank{dist.get_rank()}.jsonl", "a") as f:
            f.write(json.dumps([type(network).__name__, list(volumes)]) + "\n")
        return predict(network, volumes, *args, **kwargs)

    case_level.predict_cases = recording


@pytest.fixture(scope="module")
def segmentation(tmp_path_factory: pytest.TempPathFactory) -> PlannedDataset:
    return planned_segmentation_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def classification(tmp_path_factory: pytest.TempPathFactory) -> CaseLevelDataset:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return planned_case_level_dataset(tmp_path_factory, tmp_path_factory.mktemp("ddp_classification"),
                                          "classification", CLASSIFICATION_CASES, monkeypatch)


@pytest.fixture(scope="module")
def regression(tmp_path_factory: pytest.TempPathFactory) -> CaseLevelDataset:
    """The planned regression dataset, its network re-planned with :data:`SHALLOW_HEAD_LEVELS`."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        dataset = planned_case_level_dataset(tmp_path_factory, tmp_path_factory.mktemp("ddp_regression"),
                                             "regression", REGRESSION_CASES, monkeypatch)
    plans_file = dataset.root / "nnUNet_preprocessed" / dataset.name / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]["head_pool_levels"] = SHALLOW_HEAD_LEVELS
    plans_file.write_text(json.dumps(plans))
    return dataset


def test_the_default_segmentation_trainer_trains_in_step_under_ddp(segmentation, tmp_path):
    """Deep supervision off leaves three of the decoder's four output convs without a gradient, and the output conv
    drawn afresh after the pretrained transfer differs per rank: FomoFinetuneTrainer stopped at its second iteration
    and its ranks drifted apart."""
    ranks = train_ddp_on_cpu(DATASET_NAME, CONFIGURATION, 0, "FomoFinetuneTrainer_debug", tmp_path,
                             _env(segmentation.env, tmp_path / "results"))
    assert_ranks_agree(ranks, "ema_fg_dice")


def test_the_classification_trainer_trains_in_step_under_ddp(classification, tmp_path):
    """Through nnU-Net's own launcher (the torchrun path is in ``test_ddp_torchrun``): the ranks hold the same weights
    and every rank logs the same AUROC of all validation cases."""
    ranks = train_ddp_on_cpu(classification.name, CONFIGURATION, 0, "FomoClassificationTrainer_debug", tmp_path,
                             _env(classification.env, tmp_path / "results"))
    assert_ranks_agree(ranks, "val_auroc")


def test_segmentation_with_deep_supervision_layerwise_rates_and_a_frozen_epoch_trains_in_step_under_ddp(segmentation,
                                                                                                    tmp_path):
    """Every output conv gets a gradient, but the output layers drawn after the pretrained transfer must still be the
    same on both ranks; the per-level parameter groups must not change what DDP synchronises; and the frozen first
    epoch leaves the encoder without a gradient, the second unfreezes it under DDP."""
    ranks = train_ddp_on_cpu(DATASET_NAME, CONFIGURATION, 0, DEEP_SUPERVISION_TRAINER, tmp_path,
                             _env(segmentation.env, tmp_path / "results"), setup=register_deep_supervision_trainer)
    assert_ranks_agree(ranks, "ema_fg_dice")


def test_segmentation_from_a_resenc_checkpoint_trains_in_step_under_ddp(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    """Two gloo ranks through nnU-Net's ``run_ddp`` (see ``ddp_gloo``): the residual decoder's coarser output convs get
    no gradient with deep supervision off, and its output conv is drawn after the transfer; the ranks must still
    hold the same weights and log the same Dice. The fold then holds the whole FOMO26 checkpoint and predicts (the
    checks ``test_resenc_training`` makes of the nnssl layout)."""
    raw = tmp_path / "nnUNet_raw" / DATASET_NAME
    make_raw_dataset(raw)
    plan_resenc(tmp_path, DATASET_ID, monkeypatch)
    ranks = train_ddp_on_cpu(DATASET_NAME, CONFIGURATION, 0, RESENC_TRAINER, tmp_path,
                             {"nnUNet_compile": "false"}, setup=register_resenc_trainer)
    assert_ranks_agree(ranks, "ema_fg_dice")
    assert any(key.startswith("encoder.stages.5.") for key in ranks[0]["state"])  # the 6-stage residual encoder
    monkeypatch.setitem(TRAINERS, RESENC_TRAINER, resenc_trainer())  # fomo_predict finds it by its name here too
    results = tmp_path / "nnUNet_results" / DATASET_NAME / f"{RESENC_TRAINER}__nnUNetPlans__{CONFIGURATION}"
    check_segmentation_fold(results / "fold_0", raw, tmp_path / "predicted")


def test_case_level_validation_is_split_over_the_ranks_and_scored_once(regression, tmp_path):
    """Each rank predicts its share of the validation cases through the bare network; every rank logs the metric of
    all of them, and the one summary covers every case. (The head pools a shallow level: the deeper encoder stages
    train under DDP without a gradient.)"""
    (tmp_path / "record").mkdir()
    env = {**_env(regression.env, tmp_path / "results"), RECORD_ENV: str(tmp_path / "record")}
    trainer = "FomoRegressionTrainer_debug"
    ranks = train_ddp_on_cpu(regression.name, CONFIGURATION, 0, trainer, tmp_path, env,
                             setup=record_validated_cases)
    assert_ranks_agree(ranks, "val_mae")
    validations = [[json.loads(line) for line in (tmp_path / "record" / f"rank{r}.jsonl").read_text().splitlines()]
                   for r in range(2)]
    val_cases = sorted(regression.splits[0]["val"])
    assert len(validations[0]) == len(validations[1]) == 3  # 2 epochs, then the final validation
    for (network0, cases0), (network1, cases1) in zip(*validations):
        assert network0 == network1 == "FomoUNet"
        assert not set(cases0) & set(cases1) and sorted(cases0 + cases1) == val_cases
    summary = json.loads((Path(env["nnUNet_results"]) / regression.name / f"{trainer}__nnUNetPlans__{CONFIGURATION}"
                          / "fold_0" / "validation" / "summary.json").read_text())
    assert summary["n_cases"] == len(val_cases)


def test_a_planned_batch_smaller_than_the_ranks_is_refused_before_training(segmentation, tmp_path, monkeypatch):
    """(In this process, as if it were one of 4 ranks: the refusal comes before anything distributed happens.)"""
    use_dataset(monkeypatch, segmentation)
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    monkeypatch.setattr(base, "world_size", lambda: 4)
    with pytest.raises(FomoInputError, match="batch_size 2 cannot be split over 4 DDP ranks; re-plan with "
                                             "fomo_plan_and_preprocess --batch-size 4"):
        FomoFinetuneTrainer({**segmentation.plans, "continue_training": False}, CONFIGURATION, 0,
                            segmentation.dataset_json, torch.device("cpu"))
    assert not list(tmp_path.iterdir())


def test_planning_a_batch_for_the_ranks(segmentation, monkeypatch):
    """``fomo_plan_and_preprocess --batch-size 4``: plans for 4 GPUs at 2 cases each (nnU-Net splits the batch)."""
    from nnunet_ext.preprocessing.planner import FomoPlanner, FomoPlanSettings

    use_dataset(monkeypatch, segmentation)
    settings = FomoPlanSettings(starting_filters=4, patch_size=(32,) * 3, batch_size=4)
    planner = FomoPlanner(DATASET_ID, settings=settings, plans_name="nnUNetPlans_ddp4")
    try:
        plans = planner.plan_experiment()
    finally:
        (segmentation.root / "nnUNet_preprocessed" / DATASET_NAME / "nnUNetPlans_ddp4.json").unlink(missing_ok=True)
    assert plans["configurations"][CONFIGURATION]["batch_size"] == 4
    assert segmentation.plans["configurations"][CONFIGURATION]["batch_size"] == 2  # the default stays nnU-Net's

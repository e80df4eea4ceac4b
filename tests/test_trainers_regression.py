"""FomoRegressionTrainer (Task 3) trained by nnU-Net's own run_training on a tiny planned dataset, on the CPU."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from sklearn.linear_model import RidgeCV
from sklearn.metrics import mean_absolute_error
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from case_level_datasets import (
    PATCH,
    CaseLevelDataset,
    build_trainer,
    fit_a_handful,
    planned_case_level_dataset,
    whole_training_cases,
)
from learning import (
    HEAD_AND_ENCODER_ENDS,
    LOSS_FALL,
    head_and_encoder_ends_changed,
    weights_after_pretrained_load,
)
from nnunet_ext.trainers import TRAINERS, FomoRegressionTrainer, FomoRegressionTrainer_L1, FomoRegressionTrainer_Rotate
from nnunet_ext.trainers.regression import NO_ROTATION, STANDARDISER_ATTRIBUTE, predicted_values, standardiser_of
from nnunet_ext.trainers.case_validation import predict_cases
from nnunet_ext.trainers.variants import DEMO_EPOCH_VALIDATION_CASES
from nnunet_ext.utils.linear_models import RIDGE_ALPHAS

DEBUG_TRAINER = "FomoRegressionTrainer_debug"
N_CASES = 10


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        yield planned_case_level_dataset(tmp_path_factory, tmp_path_factory.mktemp("regression"), "regression", N_CASES,
                                         mp)


@pytest.fixture(scope="module")
def trained_and_loaded(dataset: CaseLevelDataset) -> tuple[Path, dict]:
    """Fold 0 of the ``_debug`` variant (2 epochs of 4 iterations, then nnU-Net's final validation) and its
    weights right after the pretrained load."""
    with weights_after_pretrained_load() as loaded:
        fold = dataset.train(DEBUG_TRAINER)
    return fold, loaded[0]


@pytest.fixture(scope="module")
def trained(trained_and_loaded: tuple[Path, dict]) -> Path:
    return trained_and_loaded[0]


def _training_ages(dataset: CaseLevelDataset) -> np.ndarray:
    return np.array([dataset.targets[c] for c in dataset.splits[0]["train"]])


def _trainer(dataset: CaseLevelDataset, trainer_class: type = FomoRegressionTrainer) -> FomoRegressionTrainer:
    trainer = build_trainer(dataset, trainer_class)
    trainer.initialize()
    return trainer


def _read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_fold_folder_holds_checkpoints_report_and_validation(trained: Path, dataset: CaseLevelDataset):
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "pretrained_transfer_report.json",
                 "progress.png", "progress_val_mae.png"):
        assert (trained / name).is_file(), name
    # T1 and T2 are two channels: the plans' default stem adaptation puts the pretrained kernel on the first
    assert json.loads((trained / "pretrained_transfer_report.json").read_text())["channel_adaptation"] == "first"
    rows = _read_csv(trained / "validation" / "predictions.csv")
    assert [r["case"] for r in rows] == sorted(dataset.splits[0]["val"])
    assert all(float(r["target"]) == dataset.targets[r["case"]] for r in rows)
    predicted = np.array([float(r["predicted_age"]) for r in rows])
    assert np.all(np.isfinite(predicted))
    summary = json.loads((trained / "validation" / "summary.json").read_text())
    metrics = summary["metrics"]
    assert summary["task_type"] == "regression" and math.isfinite(metrics["mae"])
    truth = np.array([float(r["target"]) for r in rows])
    assert metrics["mae"] == pytest.approx(np.abs(predicted - truth).mean(), rel=1e-4)
    assert metrics["mae_of_training_mean"] == pytest.approx(np.abs(truth - _training_ages(dataset).mean()).mean())


def test_checkpoints_carry_the_training_fold_standardisation(trained: Path, dataset: CaseLevelDataset):
    ages = _training_ages(dataset)
    for name in ("checkpoint_final.pth", "checkpoint_best.pth"):
        weights = torch.load(trained / name, map_location="cpu", weights_only=False)["network_weights"]
        assert weights[f"{STANDARDISER_ATTRIBUTE}.mean"].item() == pytest.approx(ages.mean(), rel=1e-6)
        assert weights[f"{STANDARDISER_ATTRIBUTE}.std"].item() == pytest.approx(ages.std(), rel=1e-6)


def test_every_epoch_logs_the_whole_case_mae(trained: Path):
    logged = torch.load(trained / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    assert len(logged["val_mae"]) == len(logged["train_losses"]) == 2
    assert all(math.isfinite(v) and v >= 0 for v in logged["val_mae"])


def test_val_rerun_reproduces_the_ages_from_the_checkpoint(trained: Path, dataset: CaseLevelDataset):
    before = _read_csv(trained / "validation" / "predictions.csv")
    (trained / "validation" / "predictions.csv").unlink()
    dataset.train(DEBUG_TRAINER, only_run_validation=True)
    after = _read_csv(trained / "validation" / "predictions.csv")
    np.testing.assert_allclose([float(r["predicted_age"]) for r in after],
                               [float(r["predicted_age"]) for r in before], rtol=1e-5)


def test_the_loss_receives_the_standardised_targets_of_the_batch_keys(dataset: CaseLevelDataset):
    trainer = _trainer(dataset, FomoRegressionTrainer_L1)
    ages = _training_ages(dataset)
    standardiser_of(trainer.network).fit(ages)
    received = []
    real_loss = trainer.loss
    trainer.loss = lambda output, target: received.append(target) or real_loss(output, target)
    keys = ["sub_3_ses_1", "sub_7_ses_1"]
    trainer.train_step({"data": torch.rand(2, 2, PATCH, PATCH, PATCH), "target": torch.ones(2, 1, PATCH, PATCH, PATCH),
                        "keys": keys})
    expected = [[(dataset.targets[k] - ages.mean()) / ages.std()] for k in keys]
    np.testing.assert_allclose(received[0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_training_augmentation_never_rescales_and_rotates_only_in_the_rotate_variant(dataset: CaseLevelDataset):
    args = ((PATCH,) * 3, (-0.5, 0.5), None, (0, 1, 2), False)

    def spatial(transforms):
        return [t for t in transforms.transforms if isinstance(t, SpatialTransform)]

    assert all(t.p_scaling > 0 and t.p_rotation > 0 for t in spatial(nnUNetTrainer.get_training_transforms(*args)))
    default = spatial(_trainer(dataset).get_training_transforms(*args))
    assert default and all(t.p_scaling == 0 and t.p_rotation == 0 for t in default)
    rotating = spatial(_trainer(dataset, FomoRegressionTrainer_Rotate).get_training_transforms(*args))
    assert rotating and all(t.p_scaling == 0 and t.p_rotation > 0 for t in rotating)


def test_without_rotation_the_loader_crops_the_patch_itself(dataset: CaseLevelDataset):
    rotation, _, initial_patch_size, _ = \
        _trainer(dataset).configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert rotation == NO_ROTATION and tuple(initial_patch_size) == (PATCH,) * 3
    rotation, _, initial_patch_size, _ = \
        _trainer(dataset, FomoRegressionTrainer_Rotate).configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert rotation != NO_ROTATION and min(initial_patch_size) > PATCH


def test_training_changes_the_head_and_the_encoder(trained_and_loaded: tuple[Path, dict]):
    assert head_and_encoder_ends_changed(*trained_and_loaded) == HEAD_AND_ENCODER_ENDS


#: The learning check: 4 training cases fitted for a few dozen steps, at a test-only learning rate (the test
#: checkpoint holds random weights, so this is training from scratch: 50x the fine-tuning rate).
LEARNING_STEPS, LEARNING_RATE = 40, 5e-3
N_LEARNING_CASES = 4


def test_regressor_fits_a_handful_of_cases(dataset: CaseLevelDataset):
    fit, trainer = fit_a_handful(dataset, FomoRegressionTrainer, N_LEARNING_CASES, LEARNING_STEPS, LEARNING_RATE)
    ages = np.array([dataset.targets[case] for case in fit.batch["keys"]])
    assert fit.loss_fell_by_half(), fit.losses
    predicted = predicted_values(trainer.network, fit.outputs)
    # chance: the training fold's mean age for every case
    chance = mean_absolute_error(ages, np.full(len(ages), _training_ages(dataset).mean()))
    assert mean_absolute_error(ages, predicted) < LOSS_FALL * chance
    assert np.corrcoef(ages, predicted)[0, 1] > 0


def test_the_head_starts_as_ridge_on_the_training_cases_pooled_features(dataset: CaseLevelDataset):
    """Before the first step the network predicts, on every training case, what scikit-learn's ridge (standardised
    features, penalty by leave-one-out) fitted on those cases' averaged deepest level predicts in years."""
    trainer = _trainer(dataset)
    trainer.on_train_start()
    cases, volumes, features = whole_training_cases(trainer)
    ages = np.array([dataset.targets[case] for case in cases])
    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS)).fit(features, ages)
    _, outputs = predict_cases(trainer.network, volumes, torch.device("cpu"))
    predicted = predicted_values(trainer.network, outputs)
    assert np.std(ridge.predict(features)) > 1.0  # not the training mean, which a random head would predict
    np.testing.assert_allclose(predicted, ridge.predict(features), atol=0.05)


def test_epoch_validation_on_a_subset_scores_the_same_cases_every_run(dataset: CaseLevelDataset):
    """``epoch_validation_cases`` (the CPU demo's 8): a seeded subset of the fold's validation cases after each
    epoch, the same in every run; None keeps every case (the final validation always scores every case)."""
    val_keys = set(dataset.splits[0]["val"])
    assert len(val_keys) > 1
    subsets = []
    for _ in range(2):
        trainer = _trainer(dataset)
        trainer.epoch_validation_cases = len(val_keys) - 1
        subsets.append(list(trainer._validation_dataset(trainer.epoch_validation_cases).identifiers))
    assert subsets[0] == subsets[1] and len(subsets[0]) == len(val_keys) - 1 and set(subsets[0]) < val_keys
    assert set(_trainer(dataset)._validation_dataset().identifiers) == val_keys
    demo = build_trainer(dataset, TRAINERS["FomoRegressionTrainer_cpuDemo"])
    assert demo.epoch_validation_cases == DEMO_EPOCH_VALIDATION_CASES
    assert FomoRegressionTrainer.epoch_validation_cases is None

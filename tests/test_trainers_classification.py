"""FomoClassificationTrainer (Task 1) trained by nnU-Net's own run_training on a tiny planned dataset, on the CPU."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from case_level_datasets import (
    CaseLevelDataset,
    build_trainer,
    fit_a_handful,
    planned_case_level_dataset,
    whole_training_cases,
)
from learning import (
    HEAD_AND_ENCODER_ENDS,
    head_and_encoder_ends_changed,
    weights_after_pretrained_load,
)
from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION
from nnunet_ext.trainers import FomoClassificationTrainer
from nnunet_ext.trainers.case_level import LINEAR_PROBE_SEED
from nnunet_ext.trainers.case_validation import predict_cases
from nnunet_ext.trainers.classification import positive_probability
from nnunet_ext.trainers.sampling import wrapped_loader
from nnunet_ext.utils.linear_models import fit_linear_model

DEBUG_TRAINER = "FomoClassificationTrainer_debug"
N_CASES = 10


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        yield planned_case_level_dataset(tmp_path_factory, tmp_path_factory.mktemp("classification"), "classification", N_CASES,
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


def _trainer(dataset: CaseLevelDataset) -> FomoClassificationTrainer:
    trainer = build_trainer(dataset, FomoClassificationTrainer)
    trainer.initialize()
    return trainer


def _read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_fold_folder_holds_checkpoints_report_and_validation(trained: Path, dataset: CaseLevelDataset):
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "pretrained_transfer_report.json",
                 "progress.png", "progress_val_auroc.png"):
        assert (trained / name).is_file(), name
    val_cases = dataset.splits[0]["val"]
    rows = _read_csv(trained / "validation" / "predictions.csv")
    assert [r["case"] for r in rows] == sorted(val_cases)
    for row in rows:
        assert int(row["target"]) == dataset.targets[row["case"]]
        assert 0.0 <= float(row["probability"]) <= 1.0 and row["fold"] == "0"
    assert json.loads((trained / "validation" / "predictions.json").read_text())[0]["case"] == rows[0]["case"]
    summary = json.loads((trained / "validation" / "summary.json").read_text())
    assert summary["task_type"] == "classification" and summary["n_cases"] == len(val_cases)
    assert math.isfinite(summary["metrics"]["auroc"])
    assert summary["mirror_axes"] == [0, 1, 2]


def test_every_epoch_logs_the_whole_case_auroc(trained: Path):
    checkpoint = torch.load(trained / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logged = checkpoint["logging"]
    assert len(logged["val_auroc"]) == len(logged["train_losses"]) == 2
    assert all(math.isfinite(v) for v in logged["val_auroc"] + logged["val_losses"])
    log_text = "".join(p.read_text() for p in trained.glob("training_log_*.txt"))
    assert "val_auroc (2 whole cases)" in log_text


def test_val_rerun_reproduces_the_predictions_from_the_checkpoint(trained: Path, dataset: CaseLevelDataset):
    before = _read_csv(trained / "validation" / "predictions.csv")
    (trained / "validation" / "predictions.csv").unlink()
    dataset.train(DEBUG_TRAINER, only_run_validation=True)
    after = _read_csv(trained / "validation" / "predictions.csv")
    assert [r["case"] for r in after] == [r["case"] for r in before]
    np.testing.assert_allclose([float(r["probability"]) for r in after],
                               [float(r["probability"]) for r in before], rtol=1e-5)


def test_the_loss_receives_the_targets_of_the_batch_keys(dataset: CaseLevelDataset):
    trainer = _trainer(dataset)
    received = []
    real_loss = trainer.loss
    trainer.loss = lambda output, target: received.append(target) or real_loss(output, target)
    keys = ["sub_2_ses_1", "sub_1_ses_1", "sub_2_ses_1"]  # classes 1, 0, 1
    brain_mask = torch.ones(3, 1, 32, 32, 32)
    trainer.train_step({"data": torch.rand(3, 2, 32, 32, 32), "target": brain_mask, "keys": keys})
    assert received[0].tolist() == [dataset.targets[k] for k in keys] == [1, 0, 1]


def test_training_loader_balances_the_classes(dataset: CaseLevelDataset):
    trainer = _trainer(dataset)
    train_loader, _ = trainer.get_dataloaders()
    loader = wrapped_loader(train_loader)
    labels = np.array([dataset.targets[c] for c in loader.indices])
    p = np.asarray(loader.sampling_probabilities)
    assert p.sum() == pytest.approx(1.0)
    assert p[labels == 0].sum() == pytest.approx(p[labels == 1].sum())


def test_training_changes_the_head_and_the_encoder(trained_and_loaded: tuple[Path, dict]):
    assert head_and_encoder_ends_changed(*trained_and_loaded) == HEAD_AND_ENCODER_ENDS


#: The learning check: 4 training cases (2 per class) fitted for a few dozen steps, at a test-only learning rate
#: (the test checkpoint holds random weights, so this is training from scratch: 30x the fine-tuning rate).
LEARNING_STEPS, LEARNING_RATE = 40, 3e-3
N_LEARNING_CASES = 4


def test_the_head_starts_as_the_logistic_model_of_the_training_cases(dataset: CaseLevelDataset):
    """Before the first step the network's log-odds and probability on every training case are the fitted logistic
    model's (scikit-learn's ``decision_function`` / ``predict_proba`` on the averaged deepest level, computed apart
    from the head)."""
    trainer = build_trainer(dataset, FomoClassificationTrainer)
    trainer.initialize()
    trainer.on_train_start()
    cases, volumes, features = whole_training_cases(trainer)
    labels = np.array([dataset.targets[case] for case in cases])
    model = fit_linear_model(CLASSIFICATION, features, labels, LINEAR_PROBE_SEED)
    _, outputs = predict_cases(trainer.network, volumes, torch.device("cpu"))
    log_odds = model.decision_function(features)
    assert np.ptp(log_odds) > 1e-3  # the cases differ (on this tiny dataset the chosen penalty is strong)
    np.testing.assert_allclose((outputs[:, 1] - outputs[:, 0]).double().numpy(), log_odds, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(positive_probability(outputs), model.predict_proba(features)[:, 1], atol=1e-6)


def test_classifier_fits_a_handful_of_cases(dataset: CaseLevelDataset):
    fit, _ = fit_a_handful(dataset, FomoClassificationTrainer, N_LEARNING_CASES, LEARNING_STEPS, LEARNING_RATE)
    labels = [dataset.targets[case] for case in fit.batch["keys"]]
    assert sorted(labels) == [0, 0, 1, 1]
    assert fit.loss_fell_by_half(), fit.losses
    probabilities = torch.softmax(fit.outputs.float(), dim=1)[:, 1].numpy()
    assert roc_auc_score(labels, probabilities) == 1.0  # chance: 0.5
    assert np.array_equal(probabilities > 0.5, np.array(labels) == 1)

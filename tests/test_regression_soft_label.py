"""Soft-label brain age (``FomoRegressionTrainer_SoftLabel``) and the left-right mirroring of case-level trainers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from case_level_datasets import PATCH, CaseLevelDataset, build_trainer, planned_case_level_dataset
from nnunet_ext.errors import FomoInputError
from nnunet_ext.trainers import (
    FomoRegressionTrainer,
    FomoRegressionTrainer_L1,
    FomoRegressionTrainer_MirrorAll,
    FomoRegressionTrainer_SoftLabel,
)
from nnunet_ext.trainers.case_level import RAW_LEFT_RIGHT_AXIS, left_right_axis
from nnunet_ext.trainers.regression import (
    FEATURE_STATS_MOMENTUM,
    SOFT_LABEL_BIN_WIDTH_YEARS,
    RunningFeatureStandardiser,
    SOFT_LABEL_RANGE_YEARS,
    SoftLabelDecoder,
    SoftLabelKLLoss,
    predicted_values,
    soft_label_bin_centres,
    standardiser_of,
)

N_CASES = 10
#: Probability given to the bins a Gaussian target leaves at 0, to take finite logarithms.
TAIL = 1e-30
N_BINS = round((SOFT_LABEL_RANGE_YEARS[1] - SOFT_LABEL_RANGE_YEARS[0]) / SOFT_LABEL_BIN_WIDTH_YEARS)


def _logits(distribution: torch.Tensor) -> torch.Tensor:
    """Finite logits whose softmax is ``distribution`` (bins far in its tails underflow to 0)."""
    return torch.log(distribution.clamp_min(TAIL))


def _decoder(ages=(30.0, 50.0, 70.0)) -> SoftLabelDecoder:
    decoder = SoftLabelDecoder(soft_label_bin_centres())
    decoder.fit(ages)
    return decoder


def test_bins_tile_the_age_range():
    centres = soft_label_bin_centres()
    assert centres.numel() == N_BINS
    assert centres[0] == SOFT_LABEL_RANGE_YEARS[0] + SOFT_LABEL_BIN_WIDTH_YEARS / 2
    assert centres[-1] == SOFT_LABEL_RANGE_YEARS[1] - SOFT_LABEL_BIN_WIDTH_YEARS / 2


def test_soft_targets_are_distributions_centred_on_the_age():
    decoder = _decoder()
    ages = torch.tensor([[25.0], [61.0]])
    targets = decoder.soft_targets(ages)
    assert targets.shape == (2, N_BINS)
    torch.testing.assert_close(targets.sum(-1), torch.ones(2))
    # the expected value of a Gaussian far from the range's ends is the age itself
    torch.testing.assert_close((targets * decoder.bin_centres).sum(-1), ages[:, 0], atol=1e-3, rtol=0)


def test_decoding_is_the_expected_value_for_batches_and_single_cases():
    decoder = _decoder()
    logits = _logits(decoder.soft_targets(torch.tensor([[40.0], [72.0]])))
    torch.testing.assert_close(decoder.destandardise(logits), torch.tensor([[40.0], [72.0]]), atol=1e-3, rtol=0)
    # fomo_predict decodes one case's output vector [n_bins] and takes element 0
    assert decoder.destandardise(logits[1]).shape == (1,)
    assert decoder.destandardise(logits[1])[0].item() == pytest.approx(72.0, abs=1e-3)


def test_prior_logits_predict_the_training_mean():
    decoder = _decoder((30.0, 40.0, 80.0))
    assert decoder.destandardise(decoder.prior_logits()).item() == pytest.approx(50.0, abs=0.05)


def test_kl_loss_vanishes_on_the_target_and_grows_away_from_it():
    decoder = _decoder()
    target = decoder.soft_targets(torch.tensor([[45.0]]))
    loss = SoftLabelKLLoss()
    assert loss(_logits(target), target).item() == pytest.approx(0.0, abs=1e-5)
    near, far = (loss(_logits(decoder.soft_targets(torch.tensor([[a]]))), target).item() for a in (47.0, 60.0))
    assert 0 < near < far


def test_ages_outside_the_bins_are_refused():
    with pytest.raises(FomoInputError, match="outside the soft-label bins"):
        _decoder().check_covered(np.array([30.0, 104.0]))


def test_pooled_features_are_standardised_with_running_statistics():
    norm = RunningFeatureStandardiser(3)
    first = torch.tensor([[1.00, 2.0, 0.0], [1.02, 4.0, 0.0]])
    out = norm(first)  # the first batch sets the statistics: tiny between-case differences become +-1
    torch.testing.assert_close(out[:, 0], torch.tensor([-1.0, 1.0]), atol=1e-3, rtol=0)
    second = torch.tensor([[1.04, 6.0, 0.0], [1.06, 8.0, 0.0]])
    norm(second)
    assert norm.running_mean[1].item() == pytest.approx(3.0 + FEATURE_STATS_MOMENTUM * (7.0 - 3.0))
    norm.eval()  # inference uses the stored statistics, whatever the batch
    frozen = norm.running_mean.clone()
    single = norm(second[:1])
    torch.testing.assert_close(norm.running_mean, frozen)
    torch.testing.assert_close(single, (second[:1] - frozen) / torch.sqrt(norm.running_var + norm.eps))


def test_ras_left_right_is_the_last_array_axis_of_nnunets_reader(tmp_path: Path):
    """nibabel RAS image -> SimpleITKIO array [z, y, x]: the voxel at the right end of x is at the end of axis 2."""
    volume = np.zeros((6, 7, 8), dtype=np.float32)  # nibabel (i, j, k) = (R, A, S) under an identity affine
    volume[5, 0, 0] = 1.0
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "ras.nii.gz")
    data, _ = SimpleITKIO().read_images([str(tmp_path / "ras.nii.gz")])
    assert data.shape == (1, 8, 7, 6)
    assert tuple(np.argwhere(data[0] == 1.0)[0]) == (0, 0, 5)
    assert RAW_LEFT_RIGHT_AXIS == 2
    assert left_right_axis([0, 1, 2]) == 2 and left_right_axis([2, 0, 1]) == 0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        yield planned_case_level_dataset(tmp_path_factory, tmp_path_factory.mktemp("soft_label"), "regression", N_CASES,
                                         mp)


def _initialised(dataset: CaseLevelDataset, trainer_class: type):
    trainer = build_trainer(dataset, trainer_class)
    trainer.initialize()
    return trainer


def test_soft_label_trainer_has_one_logit_per_bin_and_trains_on_soft_targets(dataset: CaseLevelDataset):
    trainer = _initialised(dataset, FomoRegressionTrainer_SoftLabel)
    coding = standardiser_of(trainer.network)
    assert isinstance(coding, SoftLabelDecoder) and isinstance(trainer.loss, SoftLabelKLLoss)
    coding.fit([dataset.targets[c] for c in dataset.splits[0]["train"]])
    keys = ["sub_3_ses_1", "sub_7_ses_1"]
    targets = trainer.encode_targets(keys)
    assert targets.shape == (2, N_BINS)
    outputs = trainer.network(torch.rand(2, 2, PATCH, PATCH, PATCH))
    assert outputs.shape == (2, N_BINS)
    assert math.isfinite(trainer.loss(outputs, targets).item())
    ages = predicted_values(trainer.network, outputs.detach())
    assert ages.shape == (2,) and np.all((ages > 0) & (ages < 100))


def test_the_predictor_rebuilds_the_head_from_the_class(dataset: CaseLevelDataset):
    """nnU-Net's predictor calls build_network_architecture on the class with nnU-Net's label count."""
    trainer = build_trainer(dataset, FomoRegressionTrainer_SoftLabel)
    network = FomoRegressionTrainer_SoftLabel.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 2, 2, enable_deep_supervision=False)
    assert network.head.linear.out_features == N_BINS
    assert "target_standardiser.bin_centres" in network.state_dict()
    # the pooled-feature standardiser is off by default (see regression.py)
    assert not any("feature_norm" in key for key in network.state_dict())
    standardised = FomoRegressionTrainer_L1.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 2, 2, enable_deep_supervision=False)
    assert standardised.head.linear.out_features == 1


def test_default_recipe_is_the_standardised_l1():
    assert not FomoRegressionTrainer.soft_label and FomoRegressionTrainer_SoftLabel.soft_label
    assert not FomoRegressionTrainer_L1.soft_label
    assert not FomoRegressionTrainer.standardised_head_features


def test_mirroring_is_left_right_only_by_default(dataset: CaseLevelDataset):
    trainer = build_trainer(dataset, FomoRegressionTrainer)
    mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()[3]
    assert mirror_axes == (2,) == trainer.inference_allowed_mirroring_axes
    every = build_trainer(dataset, FomoRegressionTrainer_MirrorAll)
    assert every.configure_rotation_dummyDA_mirroring_and_inital_patch_size()[3] == (0, 1, 2)
    assert every.inference_allowed_mirroring_axes == (0, 1, 2)


def test_soft_label_run_predicts_ages_and_saves_its_bins(dataset: CaseLevelDataset):
    fold = dataset.train("FomoRegressionTrainer_SoftLabel_debug")
    weights = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert weights["network_weights"]["target_standardiser.bin_centres"].numel() == N_BINS
    assert list(weights["inference_allowed_mirroring_axes"]) == [2]
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["mirror_axes"] == [2]
    predictions = json.loads((fold / "validation" / "predictions.json").read_text())
    assert all(0 < record["predicted_age"] < 100 for record in predictions)

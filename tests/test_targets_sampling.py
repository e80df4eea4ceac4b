"""Per-case targets, training-fold standardisation, class-balanced sampling and whole-case forward passes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from batchgenerators.dataloading.data_loader import DataLoader
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

from nnunet_ext.errors import FomoInputError
from nnunet_ext.trainers.case_validation import (
    forward_whole_case,
    mirror_combinations,
    pad_to_multiple,
    prediction_records,
    write_validation_outputs,
)
from nnunet_ext.trainers.sampling import class_balanced_probabilities, set_sampling_probabilities
from nnunet_ext.trainers.targets import CaseTargets, TargetStandardiser


def _dataset_json(task_type: str, targets: dict, num_classes: int = 2) -> dict:
    return {"labels": {"background": 0, "brain": 1},
            "fomo": {"task_type": task_type, "num_classes": num_classes, "targets": targets}}


def test_lookup_returns_each_case_target_in_key_order():
    targets = CaseTargets.from_dataset_json(
        _dataset_json("classification", {"sub_1_ses_1": 1, "sub_2_ses_1": 0, "sub_3_ses_1": 1}), "classification")
    looked_up = targets.lookup(["sub_2_ses_1", "sub_3_ses_1", "sub_2_ses_1"])
    assert looked_up.tolist() == [0, 1, 0]
    assert looked_up.dtype == np.int64


def test_regression_targets_are_floats():
    targets = CaseTargets.from_dataset_json(_dataset_json("regression", {"a": 63, "b": 20.5}, 1), "regression")
    assert targets.lookup(["b", "a"]).tolist() == [20.5, 63.0]


def test_case_without_target_is_refused_naming_it():
    targets = CaseTargets.from_dataset_json(_dataset_json("regression", {"a": 63}, 1), "regression",
                                            source="/x/dataset.json")
    with pytest.raises(FomoInputError, match="sub_9_ses_1") as err:
        targets.lookup(["a", "sub_9_ses_1"])
    assert str(err.value.path) == "/x/dataset.json"


@pytest.mark.parametrize("dataset_json, match", [
    ({"labels": {}}, "no 'fomo' section"),
    (_dataset_json("segmentation", {"a": 1.0}), "'segmentation' task"),
    (_dataset_json("classification", {}), "missing or empty"),
    (_dataset_json("classification", {"a": 2}), "class index"),
    (_dataset_json("classification", {"a": 0.5}), "class index"),
    (_dataset_json("classification", {"a": True}), "class index"),
    (_dataset_json("classification", {"a": float("nan")}), "class index"),
])
def test_bad_classification_targets_are_refused(dataset_json, match):
    with pytest.raises(FomoInputError, match=match):
        CaseTargets.from_dataset_json(dataset_json, "classification")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "63", None])
def test_non_finite_regression_targets_are_refused(value):
    with pytest.raises(FomoInputError, match="finite number"):
        CaseTargets.from_dataset_json(_dataset_json("regression", {"a": value}, 1), "regression")


def test_standardiser_fits_the_given_values_and_round_trips():
    ages = torch.tensor([20.0, 40.0, 60.0, 80.0])
    standardiser = TargetStandardiser()
    standardiser.fit(ages.numpy())
    assert standardiser.mean.item() == pytest.approx(50.0)
    assert standardiser.std.item() == pytest.approx(np.sqrt(500.0))
    z = standardiser.standardise(ages)
    assert z.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert z.std(unbiased=False).item() == pytest.approx(1.0)
    torch.testing.assert_close(standardiser.destandardise(z), ages)


def test_standardiser_statistics_travel_in_a_state_dict():
    fitted = TargetStandardiser()
    fitted.fit([30.0, 70.0])
    restored = TargetStandardiser()
    restored.load_state_dict(fitted.state_dict())
    assert restored.destandardise(torch.tensor([1.0])).item() == pytest.approx(70.0)


def test_unfitted_standardiser_gives_nan_not_standardised_values():
    assert torch.isnan(TargetStandardiser().destandardise(torch.tensor([0.5]))).all()


def test_standardiser_refuses_constant_targets():
    with pytest.raises(FomoInputError, match="nothing to regress"):
        TargetStandardiser().fit([50.0, 50.0])


def test_balanced_probabilities_sum_to_one_and_equalise_class_mass():
    labels = [1] * 13 + [0] * 8  # Task 1's 13 / 8
    cases = [f"sub_{i}_ses_1" for i in range(len(labels))]
    p = class_balanced_probabilities(cases, labels)
    assert p.shape == (21,)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    labels = np.array(labels)
    assert p[labels == 1].sum() == pytest.approx(0.5)
    assert p[labels == 0].sum() == pytest.approx(0.5)
    # within a class every case is equally likely; a minority case is drawn more often than a majority case
    assert np.ptp(p[labels == 1]) == pytest.approx(0.0) and p[labels == 0][0] > p[labels == 1][0]


#: Batches drawn through the loader: 8000 cases, the class share within +-0.02 of its expectation (3.5 sigma).
N_SAMPLED_BATCHES = 2000


def test_balanced_sampling_through_the_loader_draws_classes_equally_often():
    """The probabilities set on a batchgenerators loader (the base of nnU-Net's) make its batches balanced;
    uniform draws would give the majority class 13/21 = 62%."""
    labels = dict(zip([f"sub_{i}_ses_1" for i in range(21)], [1] * 13 + [0] * 8))
    loader = _KeyLoader(labels)
    np.random.seed(0)  # the loader draws with the global generator
    augmenter = SingleThreadedAugmenter(loader, None)
    set_sampling_probabilities(augmenter, class_balanced_probabilities(list(labels), list(labels.values())))
    drawn = [key for _ in range(N_SAMPLED_BATCHES) for key in next(augmenter)["keys"]]
    assert np.mean([labels[key] for key in drawn]) == pytest.approx(0.5, abs=0.02)
    assert set(drawn) == set(labels)


def test_balanced_probabilities_refuse_mismatched_input():
    with pytest.raises(ValueError, match="2 case ids but 1 labels"):
        class_balanced_probabilities(["a", "b"], [1])


class _KeyLoader(DataLoader):
    """An infinite loader whose batches are just the sampled case ids (as nnU-Net's ``keys``)."""

    def __init__(self, keys):
        super().__init__(list(keys), batch_size=4, infinite=True)
        self.indices = list(keys)

    def generate_train_batch(self):
        return {"keys": list(self.get_indices())}


@pytest.mark.parametrize("workers", [0, 1])
def test_new_sampling_probabilities_reach_the_augmenter_workers(workers: int):
    loader = _KeyLoader(["a", "b", "c"])
    augmenter = NonDetMultiThreadedAugmenter(loader, None, workers, num_cached=2) if workers \
        else SingleThreadedAugmenter(loader, None)
    next(augmenter)  # nnU-Net's get_dataloaders draws a first (uniform) batch, which starts the workers
    try:
        set_sampling_probabilities(augmenter, np.array([0.0, 0.0, 1.0]))
        drawn = {key for _ in range(3) for key in next(augmenter)["keys"]}
    finally:
        if workers:
            augmenter._finish()
    assert drawn == {"c"}


def test_sampling_probabilities_must_match_the_training_cases():
    with pytest.raises(ValueError, match="2 probabilities for 3 training cases"):
        set_sampling_probabilities(SingleThreadedAugmenter(_KeyLoader(["a", "b", "c"]), None), np.array([0.5, 0.5]))


def test_pad_to_multiple_pads_symmetrically_with_background():
    volume = torch.ones(2, 17, 16, 5)
    padded = pad_to_multiple(volume, 16)
    assert padded.shape == (2, 32, 16, 16)
    assert padded.sum() == volume.sum()
    # 15 voxels of padding on the first axis: 7 before, 8 after
    assert padded[:, 7:24].sum() == volume.sum() and padded[:, :7].abs().sum() == 0


def test_mirror_combinations_lists_every_subset():
    assert mirror_combinations(None) == [()]
    assert sorted(mirror_combinations((0, 2))) == sorted([(), (0,), (2,), (0, 2)])


class _FirstVoxelNet(torch.nn.Module):
    """Returns the value of voxel [0, 0, 0] of channel 0: mirroring moves a different voxel there."""

    def forward(self, x):
        return x[:, 0, 0, 0, 0][:, None]


def test_forward_whole_case_averages_the_mirrored_outputs():
    volume = torch.zeros(1, 16, 16, 16)
    volume[0, 0, 0, 0] = 4.0  # seen only without flipping axis 0
    assert forward_whole_case(_FirstVoxelNet(), volume).tolist() == [4.0]
    assert forward_whole_case(_FirstVoxelNet(), volume, mirror_axes=(0,)).tolist() == [2.0]


def test_validation_outputs_hold_the_records_and_summary(tmp_path):
    records = prediction_records({"b": 1, "a": 0}, {"a": 0.25, "b": 0.75}, fold=3, prediction_name="probability")
    write_validation_outputs(tmp_path, records, {"auroc": 1.0})
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"case": "a", "target": "0", "probability": "0.25", "fold": "3"},
                    {"case": "b", "target": "1", "probability": "0.75", "fold": "3"}]
    assert json.loads((tmp_path / "predictions.json").read_text()) == records
    assert json.loads((tmp_path / "summary.json").read_text()) == {"auroc": 1.0}

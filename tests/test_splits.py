"""Leak-free, stratified, seeded splits (nnunet_ext.dataset_conversion.splits)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from nnunet_ext.dataset_conversion.splits import (
    N_QUANTILE_BINS,
    make_splits,
    quantile_bins,
    split_test_set,
    stratification_labels,
    subsample_subjects,
)
from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION, REGRESSION
from nnunet_ext.errors import FomoInputError

N_FOLDS = 5


def task1_cases(n_positive: int = 13, n_negative: int = 8, second_sessions: int = 0):
    """Task-1-like cases: one session per subject, the first ``second_sessions`` subjects with a second one."""
    labels = [1] * n_positive + [0] * n_negative
    ids, groups, strata = [], [], []
    for subject, label in enumerate(labels, start=1):
        for session in range(1, 3 if subject <= second_sessions else 2):
            ids.append(f"sub_{subject}_ses_{session}")
            groups.append(f"sub_{subject}")
            strata.append(label)
    return ids, groups, strata


def assert_leak_free(folds, ids, groups):
    subject = dict(zip(ids, groups))
    assert len(folds) == N_FOLDS
    for fold in folds:
        assert not {subject[c] for c in fold["train"]} & {subject[c] for c in fold["val"]}
        assert sorted(fold["train"] + fold["val"]) == sorted(ids)
    vals = [c for fold in folds for c in fold["val"]]
    assert sorted(vals) == sorted(ids)  # every case in exactly one val fold


def test_task1_21_cases_13_positive_8_negative():
    ids, groups, strata = task1_cases()
    folds = make_splits(ids, groups, strata, n_folds=N_FOLDS, seed=0)
    assert_leak_free(folds, ids, groups)
    label = dict(zip(ids, strata))
    for fold in folds:
        assert {label[c] for c in fold["val"]} == {0, 1}
        assert {label[c] for c in fold["train"]} == {0, 1}


def test_sessions_of_a_subject_stay_together():
    ids, groups, strata = task1_cases(second_sessions=6)
    folds = make_splits(ids, groups, strata, n_folds=N_FOLDS, seed=3)
    assert_leak_free(folds, ids, groups)
    for fold in folds:
        assert ("sub_1_ses_1" in fold["val"]) == ("sub_1_ses_2" in fold["val"])


def test_same_seed_same_folds_other_seed_other_folds():
    ids, groups, strata = task1_cases()
    assert make_splits(ids, groups, strata, seed=7) == make_splits(ids, groups, strata, seed=7)
    assert make_splits(ids, groups, strata, seed=7) != make_splits(ids, groups, strata, seed=8)


def test_rare_class_falls_back_to_grouped_folds_with_warning(caplog):
    ids, groups, strata = task1_cases(n_positive=15, n_negative=3)
    with caplog.at_level(logging.WARNING):
        folds = make_splits(ids, groups, strata, n_folds=N_FOLDS, seed=0)
    assert "fewer subjects than the 5 folds" in caplog.text
    assert_leak_free(folds, ids, groups)


def test_too_few_subjects_for_the_folds():
    ids, groups, strata = task1_cases(n_positive=2, n_negative=2)
    with pytest.raises(FomoInputError, match="4 subjects cannot fill 5 folds"):
        make_splits(ids, groups, strata, n_folds=N_FOLDS)


def test_age_bins_are_balanced_across_folds():
    ages = np.random.default_rng(0).uniform(20, 85, size=100)
    ids = [f"sub_{i}_ses_1" for i in range(len(ages))]
    groups = [f"sub_{i}" for i in range(len(ages))]
    strata = stratification_labels(REGRESSION, ages, groups)
    assert len(np.unique(strata)) == N_QUANTILE_BINS
    folds = make_splits(ids, groups, strata, seed=0)
    age = dict(zip(ids, ages))
    bin_of = dict(zip(ids, strata))
    for fold in folds:
        per_bin = np.bincount([bin_of[c] for c in fold["val"]], minlength=N_QUANTILE_BINS)
        assert per_bin.max() - per_bin.min() <= 1  # 100 cases, 5 bins of 20: 4 per bin in each val fold
        assert abs(np.mean([age[c] for c in fold["val"]]) - ages.mean()) < 5


def one_subject_each(n: int):
    return [f"sub_{i}" for i in range(n)]


def test_quantile_bins_coarsen_until_every_bin_reaches_every_fold():
    assert len(np.unique(quantile_bins(np.arange(100.0), one_subject_each(100)))) == N_QUANTILE_BINS
    assert len(np.unique(quantile_bins(np.arange(12.0), one_subject_each(12), N_FOLDS))) == 2
    assert len(np.unique(quantile_bins(np.arange(4.0), one_subject_each(4), N_FOLDS))) == 1
    np.testing.assert_array_equal(quantile_bins(np.arange(10.0), one_subject_each(10)), [0] * 5 + [1] * 5)


def test_quantile_bins_count_subjects_not_sessions():
    # 12 cases of 6 subjects (two sessions each): two bins would hold 3 subjects each, fewer than 5 folds.
    ages = np.repeat(np.arange(6.0), 2)
    groups = np.repeat(one_subject_each(6), 2)
    np.testing.assert_array_equal(quantile_bins(ages, groups, N_FOLDS), np.zeros(12))


def test_classification_strata_are_the_classes():
    np.testing.assert_array_equal(stratification_labels(CLASSIFICATION, [1.0, 0.0, 1.0], ["a", "b", "c"]), [1, 0, 1])


def test_test_set_is_grouped_stratified_and_disjoint():
    ids, groups, strata = task1_cases(second_sessions=5)
    train, test = split_test_set(ids, groups, strata, test_fraction=0.2, seed=0)
    subject, label = dict(zip(ids, groups)), dict(zip(ids, strata))
    assert sorted(train + test) == sorted(ids)
    assert not {subject[c] for c in train} & {subject[c] for c in test}
    assert {label[c] for c in test} == {0, 1}
    assert 3 <= len({subject[c] for c in test}) <= 5  # about a fifth of 21 subjects
    assert split_test_set(ids, groups, strata, 0.2, seed=0) == (train, test)


@pytest.mark.parametrize("fraction", [0.0, 0.6, -0.1])
def test_test_fraction_out_of_range(fraction):
    ids, groups, strata = task1_cases()
    with pytest.raises(FomoInputError, match="test fraction"):
        split_test_set(ids, groups, strata, fraction)


@pytest.mark.parametrize("fraction, n_subjects", [(0.25, (5, 6)), (0.5, (10, 11)), (0.75, (15, 16)), (1.0, (21, 21))])
def test_a_share_of_the_subjects_is_kept_whole_and_stratified(fraction, n_subjects):
    ids, groups, strata = task1_cases(second_sessions=5)
    kept = subsample_subjects(ids, groups, strata, fraction, seed=0)
    subject, label = dict(zip(ids, groups)), dict(zip(ids, strata))
    kept_subjects = {subject[c] for c in kept}
    assert n_subjects[0] <= len(kept_subjects) <= n_subjects[1]  # of 21
    assert sorted(kept) == sorted(c for c in ids if subject[c] in kept_subjects)  # every session of a kept subject
    assert {label[c] for c in kept} == {0, 1}
    assert subsample_subjects(ids, groups, strata, fraction, seed=0) == kept


def test_train_fraction_out_of_range():
    ids, groups, strata = task1_cases()
    with pytest.raises(FomoInputError, match="train fraction"):
        subsample_subjects(ids, groups, strata, 0.0)

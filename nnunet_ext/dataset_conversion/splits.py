"""Seeded, stratified, subject-grouped splits: a held-out test set, nnU-Net's cross-validation folds, and the
subjects kept for training when a label-efficiency run uses only a share of them.

Grouping by subject keeps every session of a subject on one side of a split (scikit-learn's
``StratifiedGroupKFold``); stratification balances the target across folds: the class (Task 1),
quantile bins of the lesion volume (Task 2) or of the age (Task 3).
"""

from __future__ import annotations

import logging
from typing import Dict, List, Sequence, Tuple

import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION
from nnunet_ext.errors import FomoInputError

log = logging.getLogger(__name__)
#: nnU-Net's file of the cross-validation folds (raw dataset folder; copied to nnUNet_preprocessed at planning).
SPLITS_FILE = "splits_final.json"

#: nnU-Net trains and ensembles five folds.
N_FOLDS = 5
#: Cross-validation needs a part to train on and one to validate on.
MIN_FOLDS = 2
#: Quantile bins for continuous targets (volume, age); fewer when there are too few subjects to fill them.
N_QUANTILE_BINS = 5
#: A larger test set would leave too little to train on.
MAX_TEST_FRACTION = 0.5


def _subjects_per_stratum(groups: np.ndarray, strata: np.ndarray) -> Dict[int, int]:
    return {int(s): len(np.unique(groups[strata == s])) for s in np.unique(strata)}


def quantile_bins(values: Sequence[float], groups: Sequence[str], n_folds: int = N_FOLDS) -> np.ndarray:
    """Bin index (0, 1, ...) of each value by its quantile among ``values``.

    Uses the most bins, up to :data:`N_QUANTILE_BINS`, for which every bin holds at least ``n_folds``
    subjects: a coarser stratum can reach every fold, a smaller one cannot.
    """
    values, groups = np.asarray(values, dtype=float), np.asarray(groups)
    for n_bins in range(N_QUANTILE_BINS, 1, -1):
        inner_edges = np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1])
        bins = np.searchsorted(inner_edges, values, side="right")
        if min(_subjects_per_stratum(groups, bins).values()) >= n_folds:
            return bins
    return np.zeros(len(values), dtype=int)


def stratification_labels(task_type: str, targets: Sequence[float], groups: Sequence[str],
                          n_folds: int = N_FOLDS) -> np.ndarray:
    """Strata for a task's targets: the class itself for classification, quantile bins otherwise."""
    if task_type == CLASSIFICATION:
        return np.asarray(targets, dtype=int)
    return quantile_bins(targets, groups, n_folds)


def _grouped_folds(groups: Sequence[str], strata: Sequence[int], n_folds: int,
                   seed: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) index arrays of ``n_folds`` subject-grouped folds, stratified where possible.

    When a stratum has fewer subjects than folds it cannot reach every fold: the folds are then only
    grouped (``GroupKFold``), with a warning.
    """
    if not len(groups) == len(strata):
        raise ValueError(f"{len(groups)} groups but {len(strata)} strata")
    if n_folds < MIN_FOLDS:
        raise FomoInputError(f"{n_folds} fold(s): cross-validation needs at least {MIN_FOLDS}")
    groups, strata = np.asarray(groups), np.asarray(strata)
    n_subjects = len(np.unique(groups))
    if n_subjects < n_folds:
        raise FomoInputError(f"{n_subjects} subjects cannot fill {n_folds} folds; at least {n_folds} are needed")
    subjects_per_stratum = _subjects_per_stratum(groups, strata)
    if min(subjects_per_stratum.values()) >= n_folds:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    else:
        log.warning("a stratum has fewer subjects than the %d folds (subjects per stratum: %s): folds are grouped "
                    "by subject but not stratified", n_folds, subjects_per_stratum)
        splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(groups)), strata, groups))


def make_splits(case_ids: Sequence[str], groups: Sequence[str], strata: Sequence[int], n_folds: int = N_FOLDS,
                seed: int = 0) -> List[Dict[str, List[str]]]:
    """Cross-validation folds in nnU-Net's ``splits_final.json`` format: ``[{"train": [...], "val": [...]}, ...]``.

    Parameters
    ----------
    case_ids : case identifiers (``sub_<N>_ses_<M>``).
    groups : the subject of each case; no subject is in both the train and the val part of a fold.
    strata : the stratum of each case (see :func:`stratification_labels`).
    n_folds : number of folds; every case is in exactly one val part.
    seed : the same seed gives the same folds.
    """
    ids = np.asarray(case_ids)
    return [{"train": sorted(ids[train].tolist()), "val": sorted(ids[val].tolist())}
            for train, val in _grouped_folds(groups, strata, n_folds, seed)]


def split_test_set(case_ids: Sequence[str], groups: Sequence[str], strata: Sequence[int], test_fraction: float,
                   seed: int = 0) -> Tuple[List[str], List[str]]:
    """Hold out a test set, grouped and stratified like the folds: returns (train ids, test ids).

    The test set is one part of a ``round(1 / test_fraction)``-fold grouped split, so its size is the
    nearest such fraction of the subjects (0.2 -> one fifth, 0.3 -> one third).
    """
    if not 0 < test_fraction <= MAX_TEST_FRACTION:
        raise FomoInputError(f"test fraction must be in (0, {MAX_TEST_FRACTION}], got {test_fraction}")
    ids = np.asarray(case_ids)
    train, test = _grouped_folds(groups, strata, round(1 / test_fraction), seed)[0]
    return sorted(ids[train].tolist()), sorted(ids[test].tolist())


def subsample_subjects(case_ids: Sequence[str], groups: Sequence[str], strata: Sequence[int], fraction: float,
                       seed: int = 0) -> List[str]:
    """The cases of about ``fraction`` of the subjects, grouped and stratified like the folds: fewer labelled subjects
    for a label-efficiency run on an unchanged test set.

    As in :func:`split_test_set`, the kept subjects are one part of a ``round(1 / fraction)``-fold grouped split
    (0.25 -> a quarter, 0.5 -> half); above one half they are all parts but one of a ``round(1 / (1 - fraction))``-fold
    split (0.75 -> three quarters). 1 keeps every case.
    """
    if not 0 < fraction <= 1:
        raise FomoInputError(f"train fraction must be in (0, 1], got {fraction}")
    ids = np.asarray(case_ids)
    if fraction == 1:
        return sorted(ids.tolist())
    if fraction <= 0.5:
        _, kept = _grouped_folds(groups, strata, round(1 / fraction), seed)[0]
    else:
        kept, _ = _grouped_folds(groups, strata, round(1 / (1 - fraction)), seed)[0]
    return sorted(ids[kept].tolist())

"""Class-balanced case sampling for the imbalanced classification task.

nnU-Net's training dataloader draws cases with replacement, by default uniformly; it accepts
``sampling_probabilities`` aligned with its dataset's (sorted) ``identifiers``. Task 1 has 13 positive and
8 negative cases: uniform sampling would show the network the majority class 62% of the time. Giving every
class the same total probability mass, split evenly among its cases, makes each batch balanced in
expectation without discarding or duplicating any case.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence, Union

import numpy as np
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

#: What nnU-Net's ``get_dataloaders`` wraps its training loader in (no workers / ``nnUNet_n_proc_DA`` workers).
Augmenter = Union[SingleThreadedAugmenter, NonDetMultiThreadedAugmenter]


def class_balanced_probabilities(case_ids: Sequence[str], labels: Sequence[int]) -> np.ndarray:
    """Sampling probability of each case so that every class present gets the same total probability.

    ``labels[i]`` is the class of ``case_ids[i]``; the result is aligned with ``case_ids`` and sums to 1.
    A case of class ``c`` gets ``1 / (K * n_c)``, with ``K`` the number of classes present and ``n_c`` the
    number of cases of class ``c``.
    """
    if len(case_ids) != len(labels):
        raise ValueError(f"{len(case_ids)} case ids but {len(labels)} labels")
    if not case_ids:
        raise ValueError("no cases to sample from")
    counts = Counter(labels)
    probabilities = np.array([1.0 / (len(counts) * counts[label]) for label in labels])
    # the divisions leave rounding errors; numpy's sampler checks that the probabilities sum to 1
    return probabilities / probabilities.sum()


def wrapped_loader(augmenter: Augmenter) -> nnUNetDataLoader:
    """The ``nnUNetDataLoader`` inside one of nnU-Net's augmenters."""
    if isinstance(augmenter, SingleThreadedAugmenter):
        return augmenter.data_loader
    if isinstance(augmenter, NonDetMultiThreadedAugmenter):
        return augmenter.generator
    raise TypeError(f"unexpected nnU-Net augmenter {type(augmenter).__name__}")


def set_sampling_probabilities(augmenter: Augmenter, probabilities: np.ndarray) -> None:
    """Make the training loader inside ``augmenter`` draw its cases with ``probabilities``.

    ``probabilities`` are aligned with the loader's ``indices`` (its dataset's sorted case ids). nnU-Net builds
    the loader with uniform sampling and starts the augmenter's workers at once, each with its own copy of the
    loader: they are restarted so that every worker samples with the new probabilities.
    """
    loader = wrapped_loader(augmenter)
    if len(probabilities) != len(loader.indices):
        raise ValueError(f"{len(probabilities)} probabilities for {len(loader.indices)} training cases")
    loader.sampling_probabilities = probabilities
    if isinstance(augmenter, NonDetMultiThreadedAugmenter):
        augmenter.restart()

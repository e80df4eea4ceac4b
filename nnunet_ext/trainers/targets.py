"""Per-case targets of the case-level tasks (classification, regression), read from dataset.json.

nnU-Net's batches carry a voxel label map (here only the brain mask) and the case ids in ``batch['keys']``.
The real target of a case lives in dataset.json under ``fomo.targets`` (written by ``fomo_convert``, see
docs/design.md); this module looks it up by case id and encodes it for the loss.

Regression targets (age in years) are standardised with the mean and std of the *training* fold only, so
that the validation cases never leak into the scaling; the statistics travel in the checkpoint (as buffers of
the network) and turn the network's output back into years.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION, FOMO_KEY, REGRESSION
from nnunet_ext.errors import FomoInputError

PathLike = Union[str, Path]

#: Task types whose target is one value per case.
CASE_LEVEL_TASK_TYPES = (CLASSIFICATION, REGRESSION)


@dataclass(frozen=True)
class CaseTargets:
    """The target of every training case of one dataset: a class index or a real value (e.g. age)."""

    task_type: str
    values: Mapping[str, float]
    #: Where the targets came from, named in error messages.
    source: Optional[Path] = None

    @classmethod
    def from_dataset_json(cls, dataset_json: Mapping, expected_task_type: str,
                          source: Optional[PathLike] = None) -> "CaseTargets":
        """Read ``fomo.targets`` of a dataset.json dict and check that it belongs to ``expected_task_type``.

        Class targets must be integers in ``[0, fomo.num_classes)``; regression targets finite numbers.
        """
        if expected_task_type not in CASE_LEVEL_TASK_TYPES:
            raise ValueError(f"{expected_task_type!r} is not a case-level task type ({CASE_LEVEL_TASK_TYPES})")
        fomo = dataset_json.get(FOMO_KEY)
        if not isinstance(fomo, Mapping):
            raise FomoInputError(f"dataset.json has no '{FOMO_KEY}' section: convert the data with fomo_convert",
                                 source)
        task_type = fomo.get("task_type")
        if task_type != expected_task_type:
            raise FomoInputError(f"dataset.json describes a {task_type!r} task, this trainer needs "
                                 f"{expected_task_type!r}", source)
        raw = fomo.get("targets")
        if not isinstance(raw, Mapping) or not raw:
            raise FomoInputError(f"dataset.json '{FOMO_KEY}.targets' is missing or empty", source)
        if task_type == CLASSIFICATION:
            values = {case: _class_index(case, v, int(fomo.get("num_classes", 2)), source) for case, v in raw.items()}
        else:
            values = {case: _finite_value(case, v, source) for case, v in raw.items()}
        return cls(task_type, values, None if source is None else Path(source))

    def lookup(self, case_ids: Sequence[str]) -> np.ndarray:
        """The targets of ``case_ids`` in their order; a case without a target is refused."""
        missing = [c for c in case_ids if c not in self.values]
        if missing:
            raise FomoInputError(f"no target in dataset.json '{FOMO_KEY}.targets' for case(s) {missing}", self.source)
        dtype = np.int64 if self.task_type == CLASSIFICATION else np.float64
        return np.array([self.values[c] for c in case_ids], dtype=dtype)


def _class_index(case: str, value: object, num_classes: int, source: Optional[PathLike]) -> int:
    # bool is an int subclass, but ``true`` in a JSON file is not a class index
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() \
            or not 0 <= int(value) < num_classes:
        raise FomoInputError(f"target of {case} is {value!r}; expected a class index in [0, {num_classes})", source)
    return int(value)


def _finite_value(case: str, value: object, source: Optional[PathLike]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FomoInputError(f"target of {case} is {value!r}; expected a finite number", source)
    return float(value)


class TargetStandardiser(nn.Module):
    """``z = (y - mean) / std`` with the training fold's statistics, held as buffers.

    Attached to the regression network, the statistics are part of its state dict: every nnU-Net checkpoint
    holds them next to the weights trained with them, and whatever rebuilds the network from the trainer class
    and loads a checkpoint (``--val``, ``--c``, prediction) gets them back. Until fitted or loaded they are NaN,
    so an unfitted standardiser can never pass standardised outputs off as years.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float("nan")))
        self.register_buffer("std", torch.tensor(float("nan")))

    @torch.no_grad()
    def fit(self, values: Sequence[float]) -> None:
        """Take the mean and (population) std of ``values``; a constant target cannot be standardised."""
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            raise ValueError("cannot standardise an empty set of targets")
        std = float(values.std())
        if not std > 0:
            raise FomoInputError(f"all {values.size} training targets equal {values[0]}: nothing to regress")
        self.mean.fill_(float(values.mean()))
        self.std.fill_(std)

    def standardise(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / self.std

    def destandardise(self, values: torch.Tensor) -> torch.Tensor:
        return values * self.std + self.mean

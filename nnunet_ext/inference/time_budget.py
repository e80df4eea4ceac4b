"""A time budget per case: which folds, mirrored or not, fit ``--time-budget SECONDS`` on the machine that predicts.

Measured at the start of each case (model loaded, case preprocessed): one forward pass of the network on this
case's input, after one warm-up pass (the first call pays cuDNN's tuning or torch.compile's compilation, which the
prediction that follows does not pay again). A fold costs ``passes x mirrorings`` such passes: passes are 1 for a
case-level network (the whole volume at once) and the sliding window's tiles for segmentation; mirrorings are
``2 ** len(mirror axes)`` with test-time mirroring, else 1. The time already spent counts against the budget; the
interpreter's start and imports before the command begins, and writing the output, do not: leave them room.

Candidates, best first (:func:`candidate_plans`): more folds before fewer, and at one number of folds mirrored
before not (an assumption: the out-of-fold results hold one prediction per case and fold, with mirroring, so they
cannot rank an ensemble against mirroring); the folds taken are those whose out-of-fold validation metric ranks best
(:func:`rank_folds`). The first candidate that fits is chosen; when none fits, the cheapest (the best fold, no
mirroring), said so.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import torch

from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION, REGRESSION, SEGMENTATION
from nnunet_ext.errors import FomoInputError
from nnunet_ext.inference.predict import FoldEnsemble
from nnunet_ext.trainers.base import unwrap_network
from nnunet_ext.trainers.case_validation import forward_whole_case, mirror_combinations

log = logging.getLogger(__name__)

Fold = Union[int, str]
#: Each fold's validation summary, written by the trainers' final validation.
VALIDATION_SUMMARY = Path("validation") / "summary.json"
#: Per task type: where the fold's metric lies in its summary.json, and whether higher is better (the challenge's
#: metrics: AUROC, absolute error; Dice for segmentation, as nnU-Net's own summary gives it).
FOLD_METRICS: Dict[str, Tuple[Tuple[str, str], bool]] = {
    CLASSIFICATION: (("metrics", "auroc"), True),
    REGRESSION: (("metrics", "mae"), False),
    SEGMENTATION: (("foreground_mean", "Dice"), True),
}


@dataclass(frozen=True)
class InferencePlan:
    """The folds to average and whether to mirror (every allowed axis) at test time."""

    folds: Tuple[Fold, ...]
    mirrored: bool

    def network_passes(self, passes_per_fold: int, mirrorings: int) -> int:
        """Forward passes of one case: ``passes_per_fold`` per fold and mirroring."""
        return len(self.folds) * passes_per_fold * (mirrorings if self.mirrored else 1)


@dataclass(frozen=True)
class Measurement:
    """What one case costs on this machine: seconds per forward pass, passes per fold (tiles), mirrored copies
    (1: the model allows no mirroring), and the seconds already spent on the case."""

    seconds_per_pass: float
    passes_per_fold: int
    mirrorings: int
    elapsed_s: float

    def predicted_s(self, plan: InferencePlan) -> float:
        """The case's seconds in all with ``plan``."""
        return self.elapsed_s + plan.network_passes(self.passes_per_fold, self.mirrorings) * self.seconds_per_pass


@dataclass(frozen=True)
class BudgetChoice:
    """The plan chosen for a budget, its predicted seconds per case, and whether it fits."""

    plan: InferencePlan
    predicted_s: float
    fits: bool


def candidate_plans(ranked_folds: Sequence[Fold], mirroring: bool = True) -> List[InferencePlan]:
    """Every plan, best first: the ``k`` best folds for ``k`` from all down to 1, mirrored (when the model allows
    ``mirroring``) before not."""
    return [InferencePlan(tuple(ranked_folds[:k]), mirrored)
            for k in range(len(ranked_folds), 0, -1) for mirrored in ((True, False) if mirroring else (False,))]


def choose_plan(ranked_folds: Sequence[Fold], measured: Measurement, budget_s: float) -> BudgetChoice:
    """The best candidate that fits ``budget_s`` as ``measured``; the cheapest when none does (``fits`` False)."""
    if not ranked_folds:
        raise ValueError("no folds to choose from")
    plans = candidate_plans(ranked_folds, measured.mirrorings > 1)
    for plan in plans:
        if measured.predicted_s(plan) <= budget_s:
            return BudgetChoice(plan, measured.predicted_s(plan), True)
    return BudgetChoice(plans[-1], measured.predicted_s(plans[-1]), False)


def _fold_metric(summary_path: Path, task_type: str) -> float:
    """The fold's validation metric (NaN where undefined, e.g. an AUROC of one class)."""
    (section, name), _ = FOLD_METRICS[task_type]
    if not summary_path.is_file():
        raise FomoInputError("no validation summary: the time budget ranks folds by their out-of-fold results (run "
                             "the fold's validation: nnUNetv2_train ... --val)", summary_path)
    try:
        value = json.loads(summary_path.read_text())[section][name]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise FomoInputError(f"no '{section}.{name}' in this validation summary", summary_path) from None
    return math.nan if value is None else float(value)


def rank_folds(model_folder: Path, folds: Sequence[Fold], task_type: str) -> List[Fold]:
    """``folds`` best first by each fold's out-of-fold validation metric (undefined metrics last, ties in the given
    order)."""
    _, higher_is_better = FOLD_METRICS[task_type]
    metrics = {fold: _fold_metric(model_folder / f"fold_{fold}" / VALIDATION_SUMMARY, task_type) for fold in folds}
    return sorted(folds, key=lambda f: (math.isnan(metrics[f]), -metrics[f] if higher_is_better else metrics[f]))


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_pass(predictor, task_type: str, data: np.ndarray, device: torch.device) -> Tuple[float, int]:
    """Seconds of one forward pass on this case's input (after one warm-up pass) and the passes one fold needs
    without mirroring. ``predictor``: nnU-Net's, initialised with the model's folds."""
    network = predictor.network
    unwrap_network(network).load_state_dict(predictor.list_of_parameters[0])
    network.to(device).eval()
    if task_type == SEGMENTATION:
        patch = tuple(predictor.configuration_manager.patch_size)
        # nnU-Net pads a case smaller than the patch up to it before tiling
        padded = tuple(max(size, tile) for size, tile in zip(data.shape[1:], patch))
        passes = len(predictor._internal_get_sliding_window_slicers(padded))
        volume = torch.zeros((data.shape[0], *patch), device=device)
    else:
        passes = 1
        volume = torch.from_numpy(data).to(device)
    timings = []
    for _ in range(2):  # warm-up, then the measured pass
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            start = time.perf_counter()
            forward_whole_case(network, volume)
            _synchronise(device)
            timings.append(time.perf_counter() - start)
    return timings[-1], passes


def mirrorings_of(predictor) -> int:
    """How many mirrored copies nnU-Net's test-time mirroring averages for this model (1: none allowed)."""
    return len(mirror_combinations(predictor.allowed_mirroring_axes))


def describe(choice: BudgetChoice, measured: Measurement, budget_s: float, total_folds: int) -> str:
    """One line: what was chosen for the budget and why."""
    plan = choice.plan
    mirroring = f"mirrored ({measured.mirrorings} copies)" if plan.mirrored else "no mirroring"
    verdict = "fits" if choice.fits else "does NOT fit (nothing does: the cheapest is used)"
    return (f"time budget {budget_s:g} s per case: {len(plan.folds)} of {total_folds} fold(s) {list(plan.folds)} "
            f"(best out-of-fold first), {mirroring}: predicted {choice.predicted_s:.1f} s, {verdict} (measured "
            f"{measured.seconds_per_pass:.3g} s per pass, {measured.passes_per_fold} pass(es) per fold, "
            f"{measured.elapsed_s:.1f} s spent before)")


def apply_time_budget(ensemble: FoldEnsemble, ranked_folds: Sequence[Fold], data: np.ndarray, budget_s: float,
                      started: float) -> BudgetChoice:
    """Measure one pass on the preprocessed case ``data``, restrict ``ensemble`` to the best plan that fits
    ``budget_s`` counted from ``started`` (``time.monotonic()``), and say what was chosen (one line)."""
    predictor = ensemble.predictor
    seconds, passes = measure_pass(predictor, ensemble.task_type, data, ensemble.device)
    measured = Measurement(seconds, passes, mirrorings_of(predictor), time.monotonic() - started)
    choice = choose_plan(ranked_folds, measured, budget_s)
    log.info(describe(choice, measured, budget_s, len(ensemble.folds)))
    ensemble.restrict(choice.plan.folds, choice.plan.mirrored)
    return choice

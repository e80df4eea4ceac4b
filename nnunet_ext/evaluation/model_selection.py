"""``fomo_find_best_configuration``: pick the trainer / plans / configuration (or ensemble of two) to predict with.

Same arguments as ``nnUNetv2_find_best_configuration``. Segmentation datasets go to nnU-Net's own function unchanged
(its output stays nnU-Net's). Classification and regression models are ranked by their pooled out-of-fold metric,
computed once on all folds' ``fold_X/validation/predictions.json`` together (AUROC for classification, MAE for
regression): with a handful of cases per fold a per-fold AUROC is noisy or undefined. Optionally the average of
the two best models' out-of-fold predictions competes too. As nnU-Net does, the result goes to
``$nnUNet_results/DatasetXXX/inference_information.json`` and ``inference_instructions.txt``, naming the
``fomo_predict`` (and ``fomo_ensemble``) commands for the winner.

Each case-level candidate's calibration (temperature scaling; a linear de-bias of ages, see
``nnunet_ext.evaluation.calibration``) is fitted on the same out-of-fold predictions, and on nothing else, and stored
in its model folder as ``calibration.json``, which ``fomo_predict`` and the challenge container apply. The ranking
uses the uncalibrated predictions: a fit judged on the cases it was fitted on would flatter itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from nnunetv2.configuration import default_num_processes
from nnunetv2.evaluation import find_best_configuration as nnunet_model_selection
from nnunetv2.paths import nnUNet_results
from nnunetv2.utilities.file_path_utilities import get_ensemble_name, maybe_convert_to_dataset_name

from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION, FOMO_KEY, REGRESSION, SEGMENTATION
from nnunet_ext.errors import FomoInputError, cli_entry
from nnunet_ext.metrics.aggregate import cross_validation_summary
from nnunet_ext.evaluation.calibration import AGE_FITS, LEAST_SQUARES, fit_calibration, write_calibration
from nnunet_ext.evaluation.report import json_safe
from nnunet_ext.inference.predict import require_nnunet_ext_trainers
from nnunet_ext.utils.arguments import int_at_least
from nnunet_ext.utils.files import atomic_write_json, atomic_write_text
from nnunet_ext.utils.nnunet_paths import (
    DEFAULT_CONFIGURATION,
    DEFAULT_FOLDS,
    DEFAULT_PLANS,
    trained_model_folder,
)

log = logging.getLogger(__name__)

#: Written by the case-level trainers' ``perform_actual_validation`` (``--val``) in each fold folder: records of
#: ``case``, ``target``, ``fold`` and one prediction column named by the trainer (``probability``, ``predicted_age``).
VALIDATION_PREDICTIONS = Path("validation") / "predictions.json"
VALIDATION_COLUMNS = ("case", "target", "fold")
#: The metric that ranks case-level models, and whether higher is better: the challenge's metrics.
RANKING_METRICS: Dict[str, Tuple[str, bool]] = {CLASSIFICATION: ("auroc", True), REGRESSION: ("mae", False)}
INFERENCE_INFORMATION = "inference_information.json"
INFERENCE_INSTRUCTIONS = "inference_instructions.txt"
#: How many of the best models the candidate ensemble averages.
ENSEMBLE_SIZE = 2


@dataclass(frozen=True)
class OutOfFold:
    """A model's (or ensemble's) validation predictions of every training case: case -> (fold, target, prediction)."""

    identifier: str
    members: Tuple[Tuple[str, str, str], ...]  # (trainer, plans, configuration) of each member model
    cases: Mapping[str, Tuple[str, float, float]]


def read_out_of_fold(model_folder: Path, folds: Sequence[str]) -> Dict[str, Tuple[str, float, float]]:
    """Every fold's validation predictions of a case-level model, keyed by case."""
    cases: Dict[str, Tuple[str, float, float]] = {}
    for fold in folds:
        path = model_folder / f"fold_{fold}" / VALIDATION_PREDICTIONS
        if not path.is_file():
            raise FomoInputError(f"no validation predictions: train fold {fold}, or rerun its validation with "
                                 "`nnUNetv2_train ... --val`", path)
        for record in json.loads(path.read_text()):
            prediction = [key for key in record if key not in VALIDATION_COLUMNS]
            if len(prediction) != 1 or any(key not in record for key in VALIDATION_COLUMNS):
                raise FomoInputError(f"expected records of {', '.join(VALIDATION_COLUMNS)} and one prediction "
                                     f"column, found {sorted(record)}", path)
            cases[record["case"]] = (str(fold), float(record["target"]), float(record[prediction[0]]))
    return cases


def fold_arrays(oof: OutOfFold) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``(targets, predictions)`` of each fold, the input of ``cross_validation_summary``."""
    by_fold: Dict[str, List[Tuple[float, float]]] = {}
    for fold, target, prediction in oof.cases.values():
        by_fold.setdefault(fold, []).append((target, prediction))
    return [tuple(np.array(column) for column in zip(*pairs)) for _, pairs in sorted(by_fold.items())]


def average(models: Sequence[OutOfFold], identifier: str) -> OutOfFold:
    """The ensemble of ``models``: their predictions averaged case by case (they must share their cases)."""
    cases = set(models[0].cases)
    for model in models[1:]:
        if set(model.cases) != cases:
            raise FomoInputError(f"{model.identifier} and {models[0].identifier} validated different cases: "
                                 "were they trained on the same splits?")
    averaged = {case: (models[0].cases[case][0], models[0].cases[case][1],
                       float(np.mean([m.cases[case][2] for m in models]))) for case in sorted(cases)}
    return OutOfFold(identifier, tuple(member for m in models for member in m.members), averaged)


def ranking_key(value: float, higher_is_better: bool) -> Tuple[bool, float]:
    """Sort key, best first; an undefined (NaN) metric ranks last."""
    return (math.isnan(value), -value if higher_is_better else value)


def predict_command(dataset: str, trainer: str, plans: str, configuration: str, folds: Sequence[str],
                    output_folder: str) -> str:
    """The ``fomo_predict`` command line of one model, with placeholders for the folders (as nnU-Net writes it)."""
    return (f"fomo_predict -d {dataset} -i INPUT_FOLDER -o {output_folder} -f {' '.join(folds)} -tr {trainer} "
            f"-c {configuration} -p {plans}")


def inference_commands(dataset: str, winner: OutOfFold, folds: Sequence[str]) -> List[str]:
    """The commands that predict with the winner: one ``fomo_predict``, or one per member and ``fomo_ensemble``."""
    if len(winner.members) == 1:
        return [predict_command(dataset, *winner.members[0], folds, "OUTPUT_FOLDER")]
    outputs = [f"OUTPUT_FOLDER_MODEL_{i + 1}" for i in range(len(winner.members))]
    return [*(predict_command(dataset, *member, folds, out) for member, out in zip(winner.members, outputs)),
            f"fomo_ensemble -i {' '.join(outputs)} -o OUTPUT_FOLDER"]


def select_case_level(dataset_name: str, task_type: str, candidates: Sequence[Tuple[str, str, str]],
                      folds: Sequence[str], allow_ensembling: bool, age_fit: str = LEAST_SQUARES) -> dict:
    """Rank case-level models by their pooled out-of-fold metric, and fit and store each one's calibration on the
    same predictions; returns the inference information."""
    metric, higher_is_better = RANKING_METRICS[task_type]
    models, calibrations = [], {}
    for trainer, plans, configuration in candidates:
        folder = trained_model_folder(dataset_name, trainer, plans, configuration)
        models.append(OutOfFold(folder.name, ((trainer, plans, configuration),), read_out_of_fold(folder, folds)))
        calibrations[folder] = fit_calibration(task_type, models[-1].cases, age_fit)
    summaries = {m.identifier: cross_validation_summary(task_type, fold_arrays(m)) for m in models}

    def best_first(model: OutOfFold) -> Tuple[bool, float]:
        return ranking_key(summaries[model.identifier]["pooled"][metric], higher_is_better)

    models.sort(key=best_first)
    if allow_ensembling and len(models) >= ENSEMBLE_SIZE:
        best = models[:ENSEMBLE_SIZE]
        results = Path(nnUNet_results.require(), dataset_name)
        ensemble = average(best, get_ensemble_name(*(str(results / m.identifier) for m in best), folds))
        summaries[ensemble.identifier] = cross_validation_summary(task_type, fold_arrays(ensemble))
        models.append(ensemble)
        models.sort(key=best_first)
    winner = models[0]
    # written once every candidate was read and ranked: a refused input leaves no model folder changed
    for folder, calibration in calibrations.items():
        log.info("%s: calibration %s, stored in %s", folder.name, calibration.describe(),
                 write_calibration(folder, calibration))
    return json_safe({
        "folds": list(folds),
        "dataset_name_or_id": dataset_name,
        "task_type": task_type,
        "metric": metric,
        "higher_is_better": higher_is_better,
        "considered_models": [{"trainer": t, "plans": p, "configuration": c} for t, p, c in candidates],
        "ensembling_allowed": allow_ensembling,
        "all_results": {m.identifier: summaries[m.identifier]["pooled"][metric] for m in models},
        "cross_validation": summaries,
        "best_model_or_ensemble": {
            "identifier": winner.identifier,
            "result_on_crossval": summaries[winner.identifier]["pooled"][metric],
            "selected_model_or_models": [{"trainer": t, "plans_identifier": p, "configuration": c}
                                         for t, p, c in winner.members],
        },
        "inference_commands": inference_commands(dataset_name, winner, folds),
        # each model's, applied by fomo_predict to each fold before averaging (an ensemble: to each member's folds)
        "calibration": {folder.name: {"description": calibration.describe(), **{
            key: value for key, value in calibration.record.items() if key != "fitted_on"}}
            for folder, calibration in calibrations.items()},
    })


def write_inference_information(dataset_name: str, information: Mapping) -> Path:
    """``inference_information.json`` and ``inference_instructions.txt`` beside the dataset's trained models."""
    folder = Path(nnUNet_results.require(), dataset_name)
    best = information["best_model_or_ensemble"]
    lines = [f"Best {information['task_type']} model by pooled out-of-fold {information['metric']}: "
             f"{best['identifier']} ({best['result_on_crossval']})", "", "***Run inference like this:***", "",
             *information["inference_commands"], "",
             "Calibration, fitted on the out-of-fold predictions and applied by fomo_predict to each fold "
             "(--no-calibration switches it off):",
             *(f"{model}: {calibration['description']}" for model, calibration in information["calibration"].items())]
    atomic_write_json(folder / INFERENCE_INFORMATION, information)
    atomic_write_text(folder / INFERENCE_INSTRUCTIONS, "\n".join(lines) + "\n")
    log.info("\n".join(lines))
    return folder / INFERENCE_INFORMATION


def dataset_task_type(dataset_name: str, candidate: Tuple[str, str, str]) -> str:
    """The task type recorded in the first candidate's dataset.json (``fomo.task_type``)."""
    path = trained_model_folder(dataset_name, *candidate) / "dataset.json"
    fomo = json.loads(path.read_text()).get(FOMO_KEY)
    if not isinstance(fomo, Mapping) or "task_type" not in fomo:
        raise FomoInputError(f"no '{FOMO_KEY}.task_type': convert the data with fomo_convert", path)
    return fomo["task_type"]


def find_best_configuration(dataset: str, trainers: Sequence[str], plans: Sequence[str] = (DEFAULT_PLANS,),
                            configurations: Sequence[str] = (DEFAULT_CONFIGURATION,),
                            folds: Sequence[str] = DEFAULT_FOLDS, allow_ensembling: bool = True,
                            age_fit: str = LEAST_SQUARES) -> dict:
    """Select the best model of ``dataset`` among every trainer x plans x configuration; see the module docstring."""
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:  # nnU-Net: no dataset with that id
        raise FomoInputError(str(e)) from None
    candidates = [(t, p, c) for t in trainers for p in plans for c in configurations]
    require_nnunet_ext_trainers()
    task_type = dataset_task_type(dataset_name, candidates[0])
    if task_type == SEGMENTATION:
        models = nnunet_model_selection.dumb_trainer_config_plans_to_trained_models_dict(trainers, configurations, plans)
        information = nnunet_model_selection.find_best_configuration(
            dataset_name, models, allow_ensembling=allow_ensembling, num_processes=default_num_processes,
            folds=tuple(int(f) for f in folds), strict=True)
        log.info("nnUNetv2_predict finds our trainers once `eval \"$(fomo_env)\"` has run; fomo_predict with the "
                 "same arguments needs no setup")
        return information
    information = select_case_level(dataset_name, task_type, candidates, folds, allow_ensembling, age_fit)
    write_inference_information(dataset_name, information)
    return information


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fomo_find_best_configuration", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="dataset name or id")
    parser.add_argument("-tr", "--trainers", nargs="+", required=True, help="trainer classes to compare")
    parser.add_argument("-p", "--plans", nargs="+", default=[DEFAULT_PLANS], help="plans identifiers to compare")
    parser.add_argument("-c", "--configurations", nargs="+", default=[DEFAULT_CONFIGURATION],
                        help="configurations to compare")
    parser.add_argument("-f", "--folds", nargs="+", type=int_at_least(0), default=list(DEFAULT_FOLDS),
                        help="folds whose validation predictions are pooled")
    parser.add_argument("--disable_ensembling", action="store_true",
                        help="do not try the ensemble of the two best models")
    parser.add_argument("--age-correction", choices=AGE_FITS, default=LEAST_SQUARES,
                        help="regression: how the linear de-bias of the ages is fitted on the out-of-fold cases: "
                             f"{LEAST_SQUARES} fits true ~ a * predicted + b (least squared error), cole inverts "
                             "predicted ~ alpha * true + beta (removes the error's dependence on age, de Lange & "
                             "Cole 2020)")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    folds = [str(f) for f in args.folds]  # nnU-Net's selection names folds as strings
    find_best_configuration(args.dataset, args.trainers, args.plans, args.configurations, folds,
                            not args.disable_ensembling, args.age_correction)
    return 0

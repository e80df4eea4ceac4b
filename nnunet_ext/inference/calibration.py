"""The calibration stored with a case-level model (``calibration.json`` in its model folder), applied to predictions.

``fomo_find_best_configuration`` fits it on the model's out-of-fold validation predictions
(``nnunet_ext.evaluation.calibration``); ``fomo_predict``, ``fomo_evaluate`` and the challenge container apply it
to each fold's prediction before the folds are averaged, as it was fitted on single folds' predictions:

- ``temperature`` (classification): ``p -> sigmoid(logit(p) / T)``;
- ``linear`` (regression): ``age -> slope * age + intercept``;
- ``none``: the fit was refused (the reason is recorded); predictions stay as they are.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np

from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION, REGRESSION
from nnunet_ext.errors import FomoInputError
from nnunet_ext.metrics.calibration import temperature_scaled

log = logging.getLogger(__name__)

CALIBRATION_JSON = "calibration.json"
TEMPERATURE, LINEAR, NO_CALIBRATION = "temperature", "linear", "none"
#: The parameters of each method and the task type it calibrates.
METHOD_PARAMETERS = {TEMPERATURE: ("temperature",), LINEAR: ("slope", "intercept"), NO_CALIBRATION: ()}
METHOD_TASK = {TEMPERATURE: CLASSIFICATION, LINEAR: REGRESSION}
#: The command-line flag that switches the stored calibration off.
NO_CALIBRATION_FLAG = "--no-calibration"


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration: its method, parameters and the full record of ``calibration.json``."""

    method: str
    parameters: Mapping[str, float]
    record: Mapping[str, Any]

    def apply(self, values: Sequence[float]) -> List[float]:
        """The calibrated predictions (probabilities or ages) of ``values``, one per value."""
        if self.method == TEMPERATURE:
            return [float(v) for v in temperature_scaled(values, self.parameters["temperature"])]
        if self.method == LINEAR:
            corrected = self.parameters["slope"] * np.asarray(values, dtype=float) + self.parameters["intercept"]
            return [float(v) for v in corrected]
        return [float(v) for v in values]

    def describe(self) -> str:
        """One line: the method, its parameters and what it was fitted on."""
        if self.method == NO_CALIBRATION:
            return f"none ({self.record.get('reason', 'no reason recorded')})"
        parameters = ", ".join(f"{name} {self.parameters[name]:.4g}" for name in METHOD_PARAMETERS[self.method])
        fit = f" ({self.record['fit']})" if "fit" in self.record else ""
        fitted_on = self.record.get("fitted_on", {})
        return (f"{self.method}{fit}: {parameters}, fitted on {fitted_on.get('n_cases', '?')} out-of-fold cases of "
                f"fold(s) {', '.join(map(str, fitted_on.get('folds', [])))}")


def calibration_from_record(record: Any, path: Path) -> Calibration:
    """Check a ``calibration.json`` record and return it as a :class:`Calibration`."""
    method = record.get("method") if isinstance(record, dict) else None
    if method not in METHOD_PARAMETERS:
        raise FomoInputError(f"not a calibration written by fomo_find_best_configuration: 'method' must be one of "
                             f"{sorted(METHOD_PARAMETERS)}", path)
    parameters = record.get("parameters", {})
    for name in METHOD_PARAMETERS[method]:
        value = parameters.get(name) if isinstance(parameters, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise FomoInputError(f"{method} calibration: parameter '{name}' is {value!r}, not a finite number "
                                 "(fit it again with fomo_find_best_configuration)", path)
    if method == TEMPERATURE and not parameters["temperature"] > 0:
        raise FomoInputError(f"temperature {parameters['temperature']} is not positive", path)
    return Calibration(method, {name: float(parameters[name]) for name in METHOD_PARAMETERS[method]}, record)


def read_calibration(model_folder: Path) -> Optional[Calibration]:
    """The calibration stored in ``model_folder``, or None when there is none."""
    path = model_folder / CALIBRATION_JSON
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FomoInputError(f"not valid JSON ({e})", path) from None
    return calibration_from_record(record, path)


def stored_calibration(model_folder: Path, task_type: str, enabled: bool = True) -> Optional[Calibration]:
    """The calibration that prediction with ``model_folder`` applies, saying which (None: predictions as the
    network gives them): the stored one unless ``enabled`` is False; segmentation has none."""
    if task_type not in METHOD_TASK.values():
        return None
    calibration = read_calibration(model_folder)
    path = model_folder / CALIBRATION_JSON
    if calibration is None:
        log.info("no %s: predictions are not calibrated (fomo_find_best_configuration fits one)", path)
        return None
    if calibration.method != NO_CALIBRATION and METHOD_TASK[calibration.method] != task_type:
        raise FomoInputError(f"a {calibration.method} calibration is for {METHOD_TASK[calibration.method]}, this "
                             f"is a {task_type} model", path)
    if not enabled:
        log.info("calibration off (%s): %s is not applied", NO_CALIBRATION_FLAG, path)
        return None
    if calibration.method == NO_CALIBRATION:
        log.warning("%s: no calibration applied: %s", path, calibration.describe())
        return None
    log.info("calibration applied to each fold's prediction: %s (%s; %s switches it off)", calibration.describe(),
             path, NO_CALIBRATION_FLAG)
    return calibration

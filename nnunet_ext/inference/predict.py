"""``fomo_predict``: predict a folder of cases with a trained model's folds, averaged into an ensemble.

- Classification (Task 1): P(positive class) per fold, averaged over folds.
- Regression (Task 3): the target (age in years) per fold, de-standardised with that fold's training statistics
  (buffers of the network, so part of each fold's weights), averaged over folds.
- Segmentation (Task 2): nnU-Net's own sliding-window prediction (logits averaged over folds) written as masks in
  the original geometry.

Case-level tasks and segmentation share nnU-Net's predictor (network rebuilt from the plans, fold weights, mirror
axes) and its preprocessing (``preprocessor.run_case_npy``), so intensities match training exactly. Case-level
networks end in global pooling: each whole preprocessed volume goes through them once per mirroring, through the
same function that validates them during training (``trainers.case_validation.forward_whole_case``).
Case-level results go to ``predictions.csv`` and ``predictions.json`` with each fold's value beside the ensemble.
The calibration that ``fomo_find_best_configuration`` stored with the model is applied to each fold's value
(``nnunet_ext.inference.calibration``; ``--no-calibration`` switches it off).
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from nnunetv2.inference.export_prediction import export_prediction_from_logits
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from tqdm import tqdm

from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION, SEGMENTATION
from nnunet_ext.env import EXT_TRAINER_VAR, ext_trainer_value
from nnunet_ext.errors import FomoInputError, cli_entry
from nnunet_ext.inference.calibration import NO_CALIBRATION_FLAG, stored_calibration
from nnunet_ext.inference.inputs import CaseSource, discover_cases, restore_source_geometry, task_of
from nnunet_ext.inference.runtime import AUTO_DEVICE, DEVICE_CHOICES, resolve_device
from nnunet_ext.preprocessing.registration import register_with_nnunet
from nnunet_ext.trainers.base import unwrap_network
from nnunet_ext.trainers.case_validation import forward_whole_case
from nnunet_ext.trainers.classification import POSITIVE_CLASS
from nnunet_ext.trainers.regression import standardiser_of
from nnunet_ext.utils.arguments import fold
from nnunet_ext.utils.files import atomic_write_csv, atomic_write_json, require_output_folder
from nnunet_ext.utils.nnunet_paths import (
    DEFAULT_CHECKPOINT,
    DEFAULT_CONFIGURATION,
    DEFAULT_FOLDS,
    DEFAULT_PLANS,
    trained_model_folder,
)

log = logging.getLogger(__name__)

PREDICTIONS_STEM = "predictions"
CSV_SUFFIX = ".csv"
PREDICTIONS_CSV = f"{PREDICTIONS_STEM}{CSV_SUFFIX}"
PREDICTIONS_JSON = f"{PREDICTIONS_STEM}.json"
#: Line of a CSV file that holds its first row of values (line 1 is the header), for error messages.
CSV_FIRST_DATA_LINE = 2
#: Column of the fold ensemble; each fold's value is in ``fold_<X>``.
ENSEMBLE_COLUMN = "prediction"
CASE_COLUMN = "case"


def fold_column(fold: Union[int, str]) -> str:
    """Column of one fold's prediction in ``predictions.csv``."""
    return f"fold_{fold}"


def parse_folds(folds: Sequence[str]) -> List[Union[int, str]]:
    """Folds as nnU-Net takes them: integers, or ``all``."""
    return [fold if fold == "all" else int(fold) for fold in folds]


def require_nnunet_ext_trainers() -> None:
    """Let nnU-Net's trainer lookup (run by the predictor) find our trainers without the user exporting anything."""
    os.environ[EXT_TRAINER_VAR] = ext_trainer_value(os.environ.get(EXT_TRAINER_VAR))
    # preprocessing looks our normalisation up by name inside nnunetv2
    register_with_nnunet()


class FoldEnsemble:
    """A trained model folder loaded for prediction with the given folds (nnU-Net's predictor underneath)."""

    def __init__(self, model_folder: Path, folds: Optional[Sequence[Union[int, str]]],
                 checkpoint: str = DEFAULT_CHECKPOINT, device: Optional[torch.device] = None,
                 use_mirroring: bool = True, calibrate: bool = True):
        """``device`` None: what the machine has (:func:`~nnunet_ext.inference.runtime.resolve_device` ``auto``);
        ``calibrate``: apply the model folder's stored calibration to case-level predictions."""
        require_nnunet_ext_trainers()
        device = resolve_device(AUTO_DEVICE) if device is None else device
        self.folds = list(folds) if folds is not None else \
            nnUNetPredictor.auto_detect_available_folds(str(model_folder), checkpoint)
        missing = [f for f in self.folds if not (model_folder / f"fold_{f}" / checkpoint).is_file()]
        if missing or not self.folds:
            raise FomoInputError(f"no {checkpoint} for fold(s) {missing or 'any'}", model_folder)
        self.predictor = nnUNetPredictor(use_mirroring=use_mirroring, device=device,
                                         perform_everything_on_device=device.type == "cuda", allow_tqdm=False)
        self.predictor.initialize_from_trained_model_folder(str(model_folder), self.folds, checkpoint)
        self.dataset_json: dict = self.predictor.dataset_json
        self.task_type: str = task_of(self.dataset_json, model_folder).task_type
        self.device = device
        self.calibration = stored_calibration(model_folder, self.task_type, calibrate)

    def restrict(self, folds: Sequence[Union[int, str]], use_mirroring: bool) -> None:
        """Predict with ``folds`` only (of those loaded), mirrored or not: what a time budget chose."""
        parameters = dict(zip(self.folds, self.predictor.list_of_parameters))
        self.predictor.list_of_parameters = [parameters[f] for f in folds]
        self.folds = list(folds)
        self.predictor.use_mirroring = use_mirroring

    def read(self, case: CaseSource) -> Tuple[np.ndarray, dict]:
        """The case's raw images and reader properties, read with the plans' reader."""
        return case.read(self.predictor.plans_manager.image_reader_writer_class())

    def preprocess(self, case: CaseSource) -> Tuple[np.ndarray, dict]:
        """The case preprocessed exactly as the training data (nnU-Net's preprocessor of the plans)."""
        return self.preprocess_images(*self.read(case))

    def preprocess_images(self, images: np.ndarray, properties: dict) -> Tuple[np.ndarray, dict]:
        """Raw images (as :meth:`read` gives them) preprocessed by nnU-Net's preprocessor of the plans."""
        plans, configuration = self.predictor.plans_manager, self.predictor.configuration_manager
        preprocessor = configuration.preprocessor_class(verbose=False)
        data, _, properties = preprocessor.run_case_npy(images, None, properties, plans, configuration,
                                                        self.dataset_json)
        return data, properties

    def _decode(self, output: torch.Tensor) -> float:
        """The loaded fold's raw output as the task's prediction: P(positive class) or the target in its unit."""
        if self.task_type == CLASSIFICATION:
            return float(torch.softmax(output, 0)[POSITIVE_CLASS])
        standardiser = standardiser_of(self.predictor.network)
        return float(standardiser.destandardise(output.to(standardiser.mean.device))[0])

    @torch.inference_mode()  # no autograd graph: it would hold every activation of a brain-sized volume
    def case_level(self, data: np.ndarray) -> List[float]:
        """Each fold's prediction for one preprocessed case (classification or regression)."""
        network = self.predictor.network
        network.to(self.device).eval()
        mirror_axes = self.predictor.allowed_mirroring_axes if self.predictor.use_mirroring else None
        volume = torch.from_numpy(data).to(self.device)
        values = []
        for parameters in self.predictor.list_of_parameters:
            # under nnUNet_compile the predictor holds torch.compile's wrapper, whose keys carry '_orig_mod.'
            unwrap_network(network).load_state_dict(parameters)
            with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                output = forward_whole_case(network, volume, mirror_axes)
            values.append(self._decode(output))
        return self.calibration.apply(values) if self.calibration else values

    def segmentation_logits(self, data: np.ndarray) -> torch.Tensor:
        """The fold-averaged logits of one preprocessed case (nnU-Net's sliding window), on the CPU."""
        return self.predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()

    def write_segmentation(self, logits: torch.Tensor, properties: dict, output_truncated: Path) -> Path:
        """Write the mask of ``logits`` in the case's original geometry to ``output_truncated`` + file ending."""
        export_prediction_from_logits(logits, properties, self.predictor.configuration_manager,
                                      self.predictor.plans_manager, self.dataset_json, str(output_truncated))
        mask = Path(f"{output_truncated}{self.dataset_json['file_ending']}")
        restore_source_geometry(mask, properties)
        return mask

    def segment(self, data: np.ndarray, properties: dict, output_truncated: Path) -> Path:
        """Write the fold-averaged segmentation of one preprocessed case to ``output_truncated`` + file ending."""
        return self.write_segmentation(self.segmentation_logits(data), properties, output_truncated)


def case_level_records(ensemble: FoldEnsemble, cases: Sequence[CaseSource]) -> List[Dict[str, Union[str, float]]]:
    """One record per case: ``case``, the ensemble ``prediction`` (mean over folds) and ``fold_<X>`` values."""
    records = []
    for case in tqdm(cases, desc="predicting"):
        values = ensemble.case_level(ensemble.preprocess(case)[0])
        records.append({CASE_COLUMN: case.case_id, ENSEMBLE_COLUMN: float(np.mean(values)),
                        **{fold_column(f): v for f, v in zip(ensemble.folds, values)}})
    return records


def write_records(output_dir: Path, records: Sequence[Mapping[str, object]], stem: str = PREDICTIONS_STEM) -> None:
    """Write the records as ``<stem>.csv`` (columns from the first record) and ``<stem>.json``, atomically."""
    atomic_write_csv(output_dir / f"{stem}.csv", records)
    atomic_write_json(output_dir / f"{stem}.json", list(records))


def read_prediction_records(path: Path) -> List[Dict[str, object]]:
    """The records of a ``fomo_predict`` output: its ``predictions.json`` or ``predictions.csv`` (the folder holding
    them: the JSON), each with a case id and finite numbers for the ensemble and every fold, every case once; anything
    else is refused naming the file and case."""
    path = path / PREDICTIONS_JSON if path.is_dir() else path
    if not path.is_file():
        raise FomoInputError(f"no {PREDICTIONS_JSON} here", path)
    records = _csv_records(path) if path.suffix.lower() == CSV_SUFFIX else _json_records(path)
    if not isinstance(records, list) or not all(isinstance(r, dict) and CASE_COLUMN in r and ENSEMBLE_COLUMN in r
                                                for r in records):
        raise FomoInputError(f"expected a list of records with '{CASE_COLUMN}' and '{ENSEMBLE_COLUMN}'", path)
    for record in records:
        for column, value in record.items():
            if column == CASE_COLUMN:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise FomoInputError(f"case {record[CASE_COLUMN]}: {column} is {value!r}, not a finite number", path)
    # A case listed twice would be scored by whichever line comes last. Refused even when the lines agree: fomo_predict
    # writes each case once, so the file was edited or concatenated, and which line is right cannot be told.
    counts = collections.Counter(str(record[CASE_COLUMN]) for record in records)
    repeated = sorted(case for case, count in counts.items() if count > 1)
    if repeated:
        raise FomoInputError(f"case {repeated[0]} is listed {counts[repeated[0]]} times"
                             + (f" (and {len(repeated) - 1} more case(s) repeated: {repeated[1:]})"
                                if len(repeated) > 1 else "")
                             + ": every case needs exactly one prediction", path)
    return records


def _json_records(path: Path) -> object:
    """The parsed content of a ``predictions.json``."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FomoInputError(f"not valid JSON ({e}): truncated or not written by fomo_predict?", path) from None


def _csv_records(path: Path) -> List[Dict[str, object]]:
    """The rows of a ``predictions.csv`` as records, numbers parsed (text that is no number stays text, for the
    caller's check to name)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (csv.Error, UnicodeDecodeError) as e:
        raise FomoInputError(f"not a readable CSV table ({e})", path) from None
    records = []
    for line, row in enumerate(rows, start=CSV_FIRST_DATA_LINE):
        if None in row or None in row.values():  # csv.DictReader's markers of too many and too few fields
            raise FomoInputError(f"line {line}: the row does not have one field per header column", path)
        records.append({column: text if column == CASE_COLUMN else _number_or_text(text)
                        for column, text in row.items()})
    return records


def _number_or_text(text: str) -> object:
    """A CSV field as a float, or as the text it is when it is no number."""
    try:
        return float(text)
    except ValueError:
        return text


def predict_cases(ensemble: FoldEnsemble, cases: Sequence[CaseSource], output_dir: Path) -> List[Path]:
    """Predict ``cases`` into ``output_dir``; returns the files written (masks, or the two predictions files)."""
    require_output_folder(output_dir)  # before the first case is predicted, not when its result is written
    if ensemble.task_type == SEGMENTATION:
        return [ensemble.segment(*ensemble.preprocess(case), output_dir / case.case_id)
                for case in tqdm(cases, desc="segmenting")]
    write_records(output_dir, case_level_records(ensemble, cases))
    return [output_dir / PREDICTIONS_CSV, output_dir / PREDICTIONS_JSON]


def predict_folder(input_dir: Path, output_dir: Path, model_folder: Path, folds: Optional[Sequence[Union[int, str]]],
                   checkpoint: str = DEFAULT_CHECKPOINT, device: Optional[torch.device] = None,
                   use_mirroring: bool = True, nan_to_zero: bool = False, calibrate: bool = True) -> List[Path]:
    """Predict every case of ``input_dir`` (nnU-Net-style or FOMO layout) with the folds of ``model_folder``."""
    ensemble = FoldEnsemble(model_folder, folds, checkpoint, device, use_mirroring, calibrate)
    cases = discover_cases(input_dir, ensemble.dataset_json, nan_to_zero)
    log.info("predicting %d case(s) with fold(s) %s of %s", len(cases), ensemble.folds, model_folder)
    return predict_cases(ensemble, cases, output_dir)


def add_model_arguments(parser: argparse.ArgumentParser, folds_help: str) -> None:
    """The options that name a trained model, as nnU-Net's commands name them: -d -tr -p -c -f -chk."""
    parser.add_argument("-d", "--dataset", required=True, help="dataset name or id the model was trained on")
    parser.add_argument("-tr", "--trainer", required=True, help="trainer class, e.g. FomoClassificationTrainer")
    parser.add_argument("-p", "--plans", default=DEFAULT_PLANS, help="plans identifier")
    parser.add_argument("-c", "--configuration", default=DEFAULT_CONFIGURATION, help="nnU-Net configuration")
    parser.add_argument("-f", "--folds", nargs="+", type=fold, default=parse_folds(DEFAULT_FOLDS), help=folds_help)
    parser.add_argument("-chk", "--checkpoint", default=DEFAULT_CHECKPOINT,
                        help="checkpoint file of each fold, e.g. checkpoint_best.pth")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``-device``: what the machine has by default; a device named but absent is refused (:func:`resolve_device`)."""
    parser.add_argument("-device", "--device", default=AUTO_DEVICE, choices=DEVICE_CHOICES,
                        help=f"device to predict on ({AUTO_DEVICE}: cuda when a GPU is available, else cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fomo_predict", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-i", "--input", type=Path, required=True,
                        help="folder of <case>_<XXXX>.nii.gz images (nnU-Net style) or a FOMO task folder "
                             "(preprocessed/sub_<N>/[ses_<M>/]<modality>.nii.gz)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output folder: masks (segmentation) or predictions.csv/.json (classification, regression)")
    add_model_arguments(parser, "folds whose models are averaged (integers, or 'all')")
    add_device_argument(parser)
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation (faster)")
    parser.add_argument("--nan-to-zero", action="store_true",
                        help="replace NaN/Inf voxels by 0 (and say so) instead of refusing the case, as "
                             "fomo_convert's flag")
    parser.add_argument(NO_CALIBRATION_FLAG, action="store_true",
                        help="classification, regression: do not apply the calibration fomo_find_best_configuration "
                             "stored with the model (calibration.json)")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    model_folder = trained_model_folder(args.dataset, args.trainer, args.plans, args.configuration)
    written = predict_folder(args.input, args.output, model_folder, parse_folds(args.folds), args.checkpoint,
                             device, not args.disable_tta, args.nan_to_zero, not args.no_calibration)
    log.info("wrote %d file(s) to %s", len(written), args.output)
    return 0

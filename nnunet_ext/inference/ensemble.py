"""``fomo_ensemble``: average the case-level predictions of several models (``fomo_predict`` output folders).

The case-level counterpart of ``nnUNetv2_ensemble``: each input's ``predictions.json`` ensemble column (already the
mean over that model's folds) is averaged case by case; the output lists each model's value beside the average,
under the name of its folder. ``fomo_find_best_configuration`` names this command when an ensemble of two models wins.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunet_ext.errors import FomoInputError, cli_entry
from nnunet_ext.inference.predict import CASE_COLUMN, ENSEMBLE_COLUMN, read_prediction_records, write_records
from nnunet_ext.utils.files import require_output_folder

log = logging.getLogger(__name__)


def ensemble_records(inputs: Sequence[Path]) -> List[Dict[str, object]]:
    """One record per case: ``case``, the mean ``prediction`` and each input's prediction under its folder name."""
    names = [path.name if path.is_dir() else path.parent.name for path in inputs]
    if len(set(names)) != len(names):
        raise FomoInputError(f"input folders need distinct names, got {names}")
    per_input = {name: {r[CASE_COLUMN]: float(r[ENSEMBLE_COLUMN]) for r in read_prediction_records(path)}
                 for name, path in zip(names, inputs)}
    cases = set(per_input[names[0]])
    for name, path in zip(names, inputs):
        if set(per_input[name]) != cases:
            raise FomoInputError(f"predicts other cases than {inputs[0]}: "
                                 f"{sorted(set(per_input[name]) ^ cases)}", path)
    return [{CASE_COLUMN: case, ENSEMBLE_COLUMN: float(np.mean([per_input[n][case] for n in names])),
             **{n: per_input[n][case] for n in names}} for case in sorted(cases)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fomo_ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--inputs", type=Path, nargs="+", required=True,
                        help="fomo_predict output folders (or their predictions.json files) of the models to average")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output folder for the averaged predictions.csv and predictions.json")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.inputs) < 2:
        parser.error("argument -i/--inputs: an ensemble needs at least two inputs")
    records = ensemble_records(args.inputs)
    write_records(require_output_folder(args.output), records)
    log.info("averaged %d model(s) over %d case(s) into %s", len(args.inputs), len(records), args.output)
    return 0

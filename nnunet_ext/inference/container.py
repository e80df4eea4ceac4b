"""The FOMO25 challenge container's entry point: ``python /app/predict.py --<sequence> FILE ... --output FILE``.

The challenge calls the container once per session with one flag per image (``--dwi_b1000``, ``--flair``,
``--adc``, ``--swi`` or ``--t2s``, ``--t1``, ``--t2``); the flags given say the task:

| task | flags | output |
|---|---|---|
| 1 infarct | dwi_b1000, flair, adc, swi or t2s | ``.txt``: P(infarct) |
| 2 meningioma | dwi_b1000, flair, swi or t2s | ``.nii.gz``: mask in {0, 1}, the input's shape and affine |
| 3 brain age | t1, t2 | ``.txt``: age in years |

Each task's trained model folder (``<Trainer>__<plans>__<configuration>`` with its ``fold_X/``, as nnU-Net
writes it) lies in ``$FOMO_MODEL_DIR/task<N>/`` (default ``/app/models/task<N>/``); every fold with the checkpoint is
averaged. The images are read as ``fomo_convert`` reads a session and preprocessed as in training.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from nnunet_ext.dataset_conversion.tasks import SEGMENTATION, TASKS, TaskSpec
from nnunet_ext.errors import FomoInputError, cli_entry
from nnunet_ext.inference.inputs import session_from_files, task_of
from nnunet_ext.inference.predict import DEFAULT_CHECKPOINT, FoldEnsemble
from nnunet_ext.utils.files import atomic_write_text

log = logging.getLogger(__name__)

#: Environment variable naming the folder that holds ``task1/``, ``task2/``, ``task3/``; and its default.
MODEL_DIR_ENV = "FOMO_MODEL_DIR"
DEFAULT_MODEL_DIR = Path("/app/models")
#: Output file ending per task type: masks for segmentation, one number otherwise.
MASK_SUFFIX = ".nii.gz"
VALUE_SUFFIX = ".txt"
#: Every image flag the challenge uses: the file stems of tasks.py.
SEQUENCE_FLAGS = tuple(sorted({stem for task in TASKS.values() for channel in task.channels for stem in channel.stems}))


def detect_task(given: Sequence[str]) -> TaskSpec:
    """The task whose channels the given flags fill exactly (one flag per channel, no flag of another task)."""
    for task in TASKS.values():
        stems = {stem for channel in task.channels for stem in channel.stems}
        filled = all(sum(stem in given for stem in channel.stems) == 1 for channel in task.channels)
        if filled and set(given) <= stems:
            return task
    expected = "; ".join(f"task {t.task_id}: " + " ".join("--" + "/--".join(c.stems) for c in t.channels)
                         for t in TASKS.values())
    raise FomoInputError(f"the flags {' '.join('--' + g for g in given)} match no task ({expected})")


def model_folder_for(task: TaskSpec, model_root: Path) -> Path:
    """``<model_root>/task<N>``: the trained model folder of ``task``."""
    folder = model_root / f"task{task.task_id}"
    if not (folder / "dataset.json").is_file():
        raise FomoInputError(f"no trained model for task {task.task_id} (expected a model folder with dataset.json, "
                             f"plans.json and fold_X/; set {MODEL_DIR_ENV})", folder)
    return folder


def output_case_id(output: Path, suffix: str) -> str:
    """The case id the output file names (``sub_3.txt`` -> ``sub_3``), refusing the wrong file type."""
    if not output.name.endswith(suffix):
        raise FomoInputError(f"this task writes a {suffix} file", output)
    return output.name[: -len(suffix)]


def predict_session(files: Dict[str, Path], output: Path, model_root: Path, checkpoint: str = DEFAULT_CHECKPOINT,
                    device: torch.device = torch.device("cpu")) -> Path:
    """Predict one session (``{flag: file}``) with the fold ensemble of its task and write ``output``."""
    task = detect_task(list(files))
    suffix = MASK_SUFFIX if task.task_type == SEGMENTATION else VALUE_SUFFIX
    case_id = output_case_id(output, suffix)
    folder = model_folder_for(task, model_root)
    ensemble = FoldEnsemble(folder, None, checkpoint, device)
    trained_for = task_of(ensemble.dataset_json, folder).task_id
    if trained_for != task.task_id:
        raise FomoInputError(f"holds a task {trained_for} model, the flags ask for task {task.task_id}", folder)
    session = session_from_files(case_id, files, ensemble.dataset_json)
    data, properties = ensemble.preprocess(session)
    output.parent.mkdir(parents=True, exist_ok=True)
    if task.task_type == SEGMENTATION:
        return ensemble.segment(data, properties, output.parent / case_id)
    value = float(np.mean(ensemble.case_level(data)))
    atomic_write_text(output, f"{value}\n")
    return output


def default_device() -> str:
    """The challenge runs containers on one H100; elsewhere (tests, laptops) the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="predict.py", description=__doc__.split("\n\n")[0])
    for flag in SEQUENCE_FLAGS:
        parser.add_argument(f"--{flag}", type=Path, default=None, help=f"the session's {flag} image (.nii.gz)")
    parser.add_argument("--output", type=Path, required=True,
                        help="file to write: /output/sub_<N>.txt (tasks 1, 3) or /output/sub_<N>.nii.gz (task 2)")
    parser.add_argument("--model-dir", type=Path, default=Path(os.environ.get(MODEL_DIR_ENV, DEFAULT_MODEL_DIR)),
                        help=f"folder holding task<N>/ model folders (default: ${MODEL_DIR_ENV} or {DEFAULT_MODEL_DIR})")
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="checkpoint file of each fold")
    parser.add_argument("--device", default=default_device(), choices=("cuda", "cpu"),
                        help="device to predict on (default: cuda when available)")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    files = {flag: getattr(args, flag) for flag in SEQUENCE_FLAGS if getattr(args, flag) is not None}
    written = predict_session(files, args.output, args.model_dir, args.checkpoint, torch.device(args.device))
    log.info("wrote %s", written)
    return 0

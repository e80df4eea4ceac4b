"""The FOMO25 / FOMO26 challenge container's entry point: ``python /app/predict.py --<seq> FILE ... --output FILE``.

The challenge calls the container once per session with one flag per image (``--dwi_b1000``, ``--flair``,
``--adc``, ``--swi`` or ``--t2s``, ``--t1``, ``--t2``); the flags given say the task (FOMO26 says ``--dwi`` for
``--dwi_b1000`` and gives Task 3 ``--t1`` alone: both are accepted, and say whose rules apply unless
``--challenge`` does):

| task | flags | output |
|---|---|---|
| 1 infarct | dwi_b1000, flair, adc, swi or t2s | ``.txt``: P(infarct) |
| 2 meningioma | dwi_b1000, flair, swi or t2s | ``.nii.gz``: mask in {0, 1}, the input's shape and affine |
| 3 brain age | t1, t2 | ``.txt``: age in years |

Each task's model lies in ``$FOMO_MODEL_DIR/task<N>/`` (default ``/app/models/task<N>/``), as
``fomo_export_submission`` writes it: the folds and checkpoint of its ``manifest.json`` are averaged (a model folder
copied by hand: every fold with ``checkpoint_final.pth``). The images are read as ``fomo_convert`` reads a session
and preprocessed as in training; a mask is written back in the geometry of the session's first image.

What the challenge's validator checks, and what is written for it: a ``.txt`` holding one float at full precision
(``repr``: 17 significant digits, so that probabilities never tie in AUROC through rounding; ages are not
truncated), and a uint8 ``.nii.gz`` mask in {0, 1}. An empty mask (no meningioma found) is a valid prediction that
the challenge's scoring handles, but FOMO25's validator's check ``np.unique(mask) == [0, 1]`` fails on it (FOMO26's
accepts it): it is kept by default, with a warning under FOMO25's rules (``--empty-mask keep``), or refused with exit
status 1 (``--empty-mask error``); no fake voxel is ever added. ``--time-budget`` (or the manifest's): the folds and
mirroring that fit (:mod:`~nnunet_ext.inference.time_budget`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch

from nnunet_ext.dataset_conversion.tasks import SEGMENTATION, TASKS, Channel, TaskSpec
from nnunet_ext.errors import FomoInputError, cli_entry
from nnunet_ext.inference.calibration import NO_CALIBRATION_FLAG
from nnunet_ext.inference.inputs import session_from_files, task_of
from nnunet_ext.inference.predict import FoldEnsemble
from nnunet_ext.inference.runtime import AUTO_DEVICE, DEVICE_CHOICES, resolve_device
from nnunet_ext.inference.submission import (
    CHALLENGES,
    FOLD_RANKING_KEY,
    FOMO25,
    FOMO26,
    MODEL_FILES,
    TIME_BUDGET_KEY,
    fold_checkpoint,
    optional_model_files,
    read_manifest,
    task_folder,
    verify_exported_files,
)
from nnunet_ext.inference.time_budget import apply_time_budget, rank_folds
from nnunet_ext.utils.arguments import positive_float
from nnunet_ext.utils.files import atomic_write_text, require_output_folder
from nnunet_ext.utils.nnunet_paths import DEFAULT_CHECKPOINT

log = logging.getLogger(__name__)

#: Environment variable naming the folder that holds ``task1/``, ``task2/``, ``task3/``; and its default.
MODEL_DIR_ENV = "FOMO_MODEL_DIR"
DEFAULT_MODEL_DIR = Path("/app/models")
#: Output file ending per task type: masks for segmentation, one number otherwise.
MASK_SUFFIX = ".nii.gz"
VALUE_SUFFIX = ".txt"
#: ``--empty-mask``: keep an empty mask (warned about), or refuse it.
EMPTY_MASK_KEEP, EMPTY_MASK_ERROR = "keep", "error"
#: Exit status of ``--empty-mask error`` on an empty mask: the prediction ran, its result is refused.
EXIT_EMPTY_MASK = 1
#: FOMO26's flag for each FOMO25 flag it renamed (FOMO25's flags are the file stems of tasks.py).
FOMO26_RENAMED_FLAGS = {"dwi_b1000": "dwi"}
#: The channels FOMO26 no longer gives, per task: brain age takes the T1 alone.
FOMO26_DROPPED_CHANNELS = {3: ("T2",)}


def contract(task: TaskSpec, challenge: str) -> Tuple[Channel, ...]:
    """The channels the ``challenge``'s validator gives for ``task``, their stems being its flags."""
    if challenge == FOMO25:
        return task.channels
    dropped = FOMO26_DROPPED_CHANNELS.get(task.task_id, ())
    return tuple(Channel(channel.name, tuple(FOMO26_RENAMED_FLAGS.get(stem, stem) for stem in channel.stems))
                 for channel in task.channels if channel.name not in dropped)


#: Every image flag of either challenge.
SEQUENCE_FLAGS = tuple(sorted({stem for task in TASKS.values() for challenge in CHALLENGES
                               for channel in contract(task, challenge) for stem in channel.stems}))


def flags_of(channels: Sequence[Channel]) -> str:
    """``--dwi_b1000 --swi/--t2s``: the flags that fill ``channels`` (one of the alternatives each)."""
    return " ".join("--" + "/--".join(channel.stems) for channel in channels)


def given_flags(given: Sequence[str]) -> str:
    return " ".join("--" + flag for flag in given)


def detect_task(given: Sequence[str]) -> Tuple[TaskSpec, str]:
    """The task, and the challenge, whose contract the given flags fill exactly (one flag per channel, no other)."""
    for task in TASKS.values():
        for challenge in CHALLENGES:
            channels = contract(task, challenge)
            stems = {stem for channel in channels for stem in channel.stems}
            if set(given) <= stems and all(sum(stem in given for stem in channel.stems) == 1 for channel in channels):
                return task, challenge
    expected = "; ".join(f"task {t.task_id}: {' or '.join(flags_of(contract(t, c)) for c in CHALLENGES)}"
                         for t in TASKS.values())
    raise FomoInputError(f"the flags {given_flags(given)} match no task ({expected})")


def as_file_stems(files: Mapping[str, Path]) -> Dict[str, Path]:
    """``{flag: file}`` keyed by tasks.py's file stems (FOMO26's ``dwi`` is ``dwi_b1000``), as the reader takes it."""
    stem_of = {flag: stem for stem, flag in FOMO26_RENAMED_FLAGS.items()}
    return {stem_of.get(flag, flag): path for flag, path in files.items()}


def output_suffix(task: TaskSpec) -> str:
    """The ending of the file ``task`` writes: a mask for segmentation, one number otherwise."""
    return MASK_SUFFIX if task.task_type == SEGMENTATION else VALUE_SUFFIX


def _what_writes(output: Path, given: Sequence[str]) -> str:
    """Which tasks write a file like ``output`` and what the given flags lack for them, e.g. Task 1's flags without
    ``--adc`` are Task 2's, which writes a mask, not the ``.txt`` asked for ("" when no task writes such a file)."""
    hints, suffix = [], None
    for task in TASKS.values():
        if not output.name.endswith(output_suffix(task)):
            continue
        suffix = output_suffix(task)
        stems = {stem for channel in task.channels for stem in channel.stems}
        missing = [channel for channel in task.channels if not any(stem in given for stem in channel.stems)]
        needs = f"add {flags_of(missing)}" if set(given) <= stems else f"give {flags_of(task.channels)} instead"
        hints.append(f"task {task.task_id} ({task.target_name}: {needs})")
    return f"; a <case>{suffix} file comes from {' or '.join(hints)}" if hints else ""


def model_folder_for(task: TaskSpec, model_root: Path) -> Path:
    """``<model_root>/task<N>``: the trained model folder of ``task``."""
    folder = task_folder(model_root, task.task_id)
    if not (folder / "dataset.json").is_file():
        raise FomoInputError(f"no trained model for task {task.task_id} (export one with fomo_export_submission, or "
                             f"set {MODEL_DIR_ENV})", folder)
    return folder


def output_case_id(output: Path, task: TaskSpec, given: Sequence[str]) -> str:
    """The case id the output file names (``sub_3.txt`` -> ``sub_3``), refusing the wrong file type for the task the
    flags ``given`` select (saying which flags select which task), a folder in the output's place, or a folder to
    write it in that cannot be created or written."""
    suffix = output_suffix(task)
    if not output.name.endswith(suffix) or len(output.name) == len(suffix):
        raise FomoInputError(f"the flags {given_flags(given)} select task {task.task_id} ({task.target_name}), which "
                             f"writes a <case>{suffix} file{_what_writes(output, given)}", output)
    if output.is_dir():
        raise FomoInputError("output path is a folder; give the file to write", output)
    require_output_folder(output.parent)
    return output.name[: -len(suffix)]


class EmptyMask(Exception):
    """The predicted mask has no foreground and ``--empty-mask error`` was asked for."""


def predict_session(files: Dict[str, Path], output: Path, model_root: Path, checkpoint: Optional[str] = None,
                    device: torch.device = torch.device("cpu"), nan_to_zero: bool = False,
                    empty_mask: str = EMPTY_MASK_KEEP, calibrate: bool = True, challenge: Optional[str] = None,
                    time_budget_s: Optional[float] = None) -> Path:
    """Predict one session (``{flag: file}``) with the fold ensemble of its task and write ``output``.

    ``checkpoint`` None: the exported manifest's (or ``checkpoint_final.pth``), with the manifest's folds.
    ``challenge`` None: the rules of the challenge whose flags were given. ``time_budget_s`` None: the manifest's
    budget, if any (:mod:`~nnunet_ext.inference.time_budget`).
    """
    started = time.monotonic()
    task, flags_challenge = detect_task(list(files))
    rules = challenge or flags_challenge
    log.info("following %s's container rules (%s)", rules.upper(),
             "--challenge" if challenge else f"the flags {given_flags(list(files))} are {rules.upper()}'s")
    case_id = output_case_id(output, task, list(files))
    folder = model_folder_for(task, model_root)
    manifest = read_manifest(folder)
    folds = manifest["folds"] if manifest else None
    checkpoint = checkpoint or (manifest["checkpoint"] if manifest else DEFAULT_CHECKPOINT)
    if manifest:
        verify_exported_files(folder, manifest, [*MODEL_FILES, *optional_model_files(folder, manifest),
                                                 *(fold_checkpoint(f, checkpoint) for f in folds)])
    ensemble = FoldEnsemble(folder, folds, checkpoint, device, calibrate=calibrate)
    trained_for = task_of(ensemble.dataset_json, folder).task_id
    if trained_for != task.task_id:
        raise FomoInputError(f"holds a task {trained_for} model, the flags ask for task {task.task_id}", folder)
    session = session_from_files(case_id, as_file_stems(files), ensemble.dataset_json, nan_to_zero)
    data, properties = ensemble.preprocess(session)
    budget = time_budget_s if time_budget_s is not None else (manifest or {}).get(TIME_BUDGET_KEY)
    if budget is not None:
        apply_time_budget(ensemble, fold_ranking(folder, manifest, ensemble), data, budget, started)
    if task.task_type == SEGMENTATION:
        mask = ensemble.segment(data, properties, output.parent / case_id)
        if not np.any(sitk.GetArrayFromImage(sitk.ReadImage(str(mask)))):
            if empty_mask == EMPTY_MASK_ERROR:
                mask.unlink()
                raise EmptyMask(f"{mask}: the predicted mask is empty (--empty-mask error)")
            if rules == FOMO26:
                log.info("%s: the predicted mask is empty: a valid answer under FOMO26's rules", mask)
            else:
                log.warning("%s: the predicted mask is empty: a valid prediction, but the FOMO25 validator's "
                            "{0, 1} check reports it (see --empty-mask)", mask)
        return mask
    value = float(np.mean(ensemble.case_level(data)))
    atomic_write_text(output, f"{value!r}\n")
    return output


def fold_ranking(folder: Path, manifest: Optional[Mapping], ensemble: FoldEnsemble) -> List[Union[int, str]]:
    """The ensemble's folds best first by their out-of-fold results: as exported, else from the folder's
    validation summaries."""
    ranked = manifest.get(FOLD_RANKING_KEY) if manifest else None
    if ranked is None:
        ranked = rank_folds(folder, ensemble.folds, ensemble.task_type)
    return [fold for fold in ranked if fold in ensemble.folds]


def tasks_of_flag(flag: str) -> str:
    """``task 1 (DWI, fomo26), task 2 (DWI, fomo26)``: which tasks a sequence flag belongs to, for ``--help``."""
    return ", ".join(f"task {task.task_id} ({channel.name}, {challenge})" for task in TASKS.values()
                     for challenge in CHALLENGES for channel in contract(task, challenge) if flag in channel.stems)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fomo_challenge_predict", description=__doc__.split("\n\n")[0],
        epilog="Tasks by flags: " + "; ".join(
            f"task {t.task_id} ({t.target_name}): " + " or ".join(
                f"{' '.join('--' + '|--'.join(c.stems) for c in contract(t, challenge))} ({challenge})"
                for challenge in CHALLENGES) for t in TASKS.values()))
    for flag in SEQUENCE_FLAGS:
        parser.add_argument(f"--{flag}", type=Path, default=None,
                            help=f"the session's {flag} image (.nii.gz); {tasks_of_flag(flag)}")
    parser.add_argument("--output", type=Path, required=True,
                        help="file to write: /output/sub_<N>.txt (tasks 1, 3) or /output/sub_<N>.nii.gz (task 2)")
    parser.add_argument("--model-dir", type=Path, default=Path(os.environ.get(MODEL_DIR_ENV, DEFAULT_MODEL_DIR)),
                        help=f"folder holding task<N>/ model folders (default: ${MODEL_DIR_ENV} or {DEFAULT_MODEL_DIR})")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint file of each fold (default: the exported manifest's, else "
                             f"{DEFAULT_CHECKPOINT})")
    # the challenge runs containers on one H100; elsewhere (tests, laptops) auto takes the CPU
    parser.add_argument("--device", default=AUTO_DEVICE, choices=DEVICE_CHOICES,
                        help=f"device to predict on (default {AUTO_DEVICE}: cuda when available, else cpu)")
    parser.add_argument("--nan-to-zero", action="store_true",
                        help="replace NaN/Inf voxels by 0 (and say so) instead of refusing the session")
    parser.add_argument("--empty-mask", choices=(EMPTY_MASK_KEEP, EMPTY_MASK_ERROR), default=EMPTY_MASK_KEEP,
                        help="task 2, a mask without foreground: keep it (valid under FOMO26's rules; under FOMO25's "
                             "the challenge scores it but its validator's {0, 1} check reports it, so it is warned "
                             f"about), or remove it and exit with status {EXIT_EMPTY_MASK} (default: %(default)s)")
    parser.add_argument("--challenge", choices=CHALLENGES, default=None,
                        help="whose container rules to follow (an empty mask is valid under fomo26's); default: the "
                             "flags' own (--dwi, or task 3's --t1 alone: fomo26; --dwi_b1000, --t1 --t2: fomo25)")
    parser.add_argument("--time-budget", type=positive_float, default=None, metavar="SECONDS",
                        help="seconds per case: the folds (best out-of-fold first) and test-time mirroring that fit, "
                             "measured on this machine at the start of the case (default: the exported manifest's "
                             "budget, else every fold, mirrored)")
    parser.add_argument(NO_CALIBRATION_FLAG, action="store_true",
                        help="tasks 1, 3: do not apply the calibration stored with the model (calibration.json)")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    files = {flag: getattr(args, flag) for flag in SEQUENCE_FLAGS if getattr(args, flag) is not None}
    try:
        written = predict_session(files, args.output, args.model_dir, args.checkpoint,
                                  resolve_device(args.device, "--device"), args.nan_to_zero, args.empty_mask,
                                  not args.no_calibration, args.challenge, args.time_budget)
    except EmptyMask as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_EMPTY_MASK
    log.info("wrote %s", written)
    return 0

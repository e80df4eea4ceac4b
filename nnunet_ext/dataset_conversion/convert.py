"""``fomo_convert``: FOMO fine-tuning data -> an nnU-Net raw dataset.

Writes ``$nnUNet_raw/DatasetXXX_NAME/`` with imagesTr, labelsTr, imagesTs, labelsTs, a dataset.json
whose ``fomo`` key holds the task and every case's target (see docs/design.md), and a seeded,
stratified, subject-grouped ``splits_final.json`` that nnU-Net's planning copies to nnUNet_preprocessed.

Everything that can be checked without the voxels (layout, ids, labels, masks, missing modalities) is
checked before anything is written; the voxels are checked while the dataset is built in a temporary
folder, which only replaces ``DatasetXXX_NAME`` once complete. The input folder is only read.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from tqdm import tqdm

from nnunet_ext.dataset_conversion.fomo_reader import (
    FomoCase,
    FomoLayout,
    check_mask,
    checked_intensities,
    detect_layout,
    lesion_volume_ml,
    onto_grid,
    read_target,
    to_ras,
)
from nnunet_ext.dataset_conversion.image_checks import check_volume_shape, is_nifti
from nnunet_ext.dataset_conversion.pretraining_pool import POOL_NAME, convert_pretraining_pool
from nnunet_ext.dataset_conversion.splits import (
    MAX_TEST_FRACTION,
    MIN_FOLDS,
    N_FOLDS,
    SPLITS_FILE,
    make_splits,
    split_test_set,
    stratification_labels,
    subsample_subjects,
)
from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION, FOMO_KEY, POOL_TASK, SEGMENTATION, TaskSpec, get_task
from nnunet_ext.errors import FomoInputError, cli_entry
from nnunet_ext.utils.arguments import float_in, fraction, int_at_least, int_in, positive_float
from nnunet_ext.utils.files import atomic_directory, atomic_write_json, check_writable_folder

log = logging.getLogger(__name__)

RAW_ENV = "nnUNet_raw"
#: nnU-Net's three folders: a dataset id must name one dataset in all of them.
NNUNET_FOLDER_ENVS = (RAW_ENV, "nnUNet_preprocessed", "nnUNet_results")
#: Dataset names become folder names: no path separators, no "..", nothing a shell or nnU-Net would misread.
DATASET_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
FILE_ENDING = ".nii.gz"
#: nnU-Net dataset ids have three digits.
MAX_DATASET_ID = 999
#: What to do with a case that lacks a modality others have (``--missing-modality``).
MISSING_ZEROS, MISSING_DROP, MISSING_ERROR = "zeros", "drop", "error"
MISSING_STRATEGIES = (MISSING_ZEROS, MISSING_DROP, MISSING_ERROR)
#: What to do with NaN/Inf voxels.
NAN_ERROR, NAN_ZERO = "error", "zero"
NAN_POLICIES = (NAN_ERROR, NAN_ZERO)
#: ``fomo.label_map``: what labelsTr holds.
BRAIN_MASK = "brain_mask"  # tasks 1 and 3: the non-zero voxels of any channel
TARGET_MASK = "segmentation"  # task 2: the meningioma mask
BRAIN_LABEL = "brain"
#: Tukey's "far out" fences: a regression target beyond them is flagged in the summary (not refused).
OUTLIER_IQR_FACTOR = 3.0


@dataclass(frozen=True)
class WrittenCase:
    """What the summary reports of one converted case, and the lesion volume of a Task 2 case (its target)."""

    spacing: Tuple[float, ...]
    shape: Tuple[int, ...]
    nonfinite_voxels: int
    lesion_volume_ml: Optional[float] = None


def dataset_folder(dataset_id: int, name: str, overwrite: bool) -> Path:
    """``$nnUNet_raw/Dataset{id:03d}_{name}``, refusing an unset nnUNet_raw, a bad name, an id that another dataset
    uses in any of nnU-Net's three folders, or an existing dataset."""
    raw = os.environ.get(RAW_ENV)
    if not raw:
        raise FomoInputError(f"{RAW_ENV} is not set: export it as the folder of nnU-Net's raw datasets")
    check_writable_folder(raw, RAW_ENV)
    if not 0 < dataset_id <= MAX_DATASET_ID:
        raise FomoInputError(f"dataset id must be in 1..{MAX_DATASET_ID}, got {dataset_id}")
    if not DATASET_NAME_PATTERN.fullmatch(name):
        raise FomoInputError(f"dataset name {name!r} may only hold letters, digits, '_' and '-'")
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    # nnU-Net resolves a dataset by its id in each of its folders: a second name for one id makes that ambiguous.
    for variable in NNUNET_FOLDER_ENVS:
        root = os.environ.get(variable)
        for other in (Path(root).glob(f"Dataset{dataset_id:03d}_*") if root else ()):
            if other.name != folder_name and not other.name.startswith("."):
                raise FomoInputError(f"dataset id {dataset_id} is already used by {other.name} in {variable}; "
                                     "choose another id", other)
    folder = Path(raw) / folder_name
    if folder.exists() and not overwrite:
        raise FomoInputError("dataset exists; pass --overwrite to replace it", folder)
    return folder


def missing_modality_detail(case: FomoCase, channels: Sequence[str]) -> str:
    """``sub_3_ses_1: no flair (found adc.nii.gz, FLAIR_2.nii.gz in .../sub_3/ses_1)``: what a user needs to see
    whether the modality is missing or only misnamed."""
    folder = next(iter(case.images.values())).parent
    found = sorted(p.name for p in folder.iterdir() if is_nifti(p))
    return f"{case.case_id}: no {'/'.join(channels)} (found {', '.join(found)} in {folder})"


def resolve_channels(cases: List[FomoCase], task: TaskSpec, strategy: str,
                     ) -> Tuple[Tuple[str, ...], List[FomoCase], Dict[str, List[str]]]:
    """The dataset's channels, the cases kept, and each kept case's missing channels.

    A channel absent from every case is left out of the dataset (refused with ``error``, which promises every
    channel); a channel missing from some cases is handled by ``strategy``: ``zeros`` (a zero image), ``drop``
    (leave those cases out) or ``error``.
    """
    channels = tuple(c for c in task.channel_names if any(c in case.images for case in cases))
    absent = [c for c in task.channel_names if c not in channels]
    if absent and strategy == MISSING_ERROR:
        raise FomoInputError(f"channel(s) {', '.join(absent)} absent from every case: --missing-modality "
                             f"{MISSING_ERROR} refuses a dataset without them (use {MISSING_ZEROS} or {MISSING_DROP} "
                             "to convert without them)")
    if absent:
        log.warning("channel(s) %s absent from every case: the dataset has %d channel(s): %s",
                    absent, len(channels), list(channels))
    missing = {case.case_id: [c for c in channels if c not in case.images] for case in cases}
    missing = {case_id: chans for case_id, chans in missing.items() if chans}
    if not missing:
        return channels, cases, {}
    by_id = {case.case_id: case for case in cases}
    detail = "; ".join(missing_modality_detail(by_id[case_id], chans) for case_id, chans in missing.items())
    if strategy == MISSING_ERROR:
        raise FomoInputError(f"cases miss a modality: {detail}; use --missing-modality zeros or drop")
    log.warning("%d case(s) miss a modality, strategy '%s': %s", len(missing), strategy, detail)
    if strategy == MISSING_DROP:
        return channels, [case for case in cases if case.case_id not in missing], {}
    return channels, cases, missing


def read_case_mask(layout: FomoLayout, case: FomoCase) -> sitk.Image:
    """A Task 2 case's mask, checked to hold only 0 and 1."""
    return check_mask(layout.read_mask(case), case.mask_source)




def case_images(layout: FomoLayout, case: FomoCase, nan_to_zero: bool,
                require_co_registered: bool = True, require_volumes: bool = False) -> Tuple[Dict[str, sitk.Image], int]:
    """The case's present channels on the grid of its first one, and how many NaN/Inf voxels were zeroed.

    ``require_co_registered``: see :func:`~nnunet_ext.dataset_conversion.fomo_reader.onto_grid`.
    ``require_volumes``: refuse a single slice or a thin slab (training data), checked on each image's own grid,
    before resampling could hide it."""
    images, nonfinite = {}, 0
    for channel, image in layout.read_images(case).items():
        if require_volumes:
            check_volume_shape(image.GetSize(), case.images[channel], channel)
        images[channel], count = checked_intensities(image, case.images[channel], nan_to_zero, channel)
        nonfinite += count
    reference_channel = next(iter(images))
    reference, reference_path = images[reference_channel], case.images[reference_channel]
    aligned = {c: onto_grid(image, case.images[c], reference, reference_path, sitk.sitkLinear, require_co_registered)
               for c, image in images.items()}
    return aligned, nonfinite


def case_label_map(layout: FomoLayout, case: FomoCase,
                   images: Dict[str, sitk.Image]) -> Tuple[sitk.Image, Optional[float]]:
    """labelsTr content: the Task 2 mask on the images' grid with its lesion volume (ml, on the mask's own grid),
    or the brain (non-zero) mask for tasks 1 and 3 (and None)."""
    reference_channel = next(iter(images))
    reference = images[reference_channel]
    if layout.task.task_type != SEGMENTATION:
        brain = np.any([sitk.GetArrayViewFromImage(image) != 0 for image in images.values()], axis=0)
        mask = sitk.GetImageFromArray(brain.astype(np.uint8))
        mask.CopyInformation(reference)
        return mask, None
    mask = read_case_mask(layout, case)
    if mask.GetSize() != reference.GetSize():
        raise FomoInputError(f"mask shape {mask.GetSize()} does not match the image shape {reference.GetSize()} of "
                             f"{case.images[reference_channel].name}", case.mask_source)
    on_grid = onto_grid(mask, case.mask_source, reference, case.images[reference_channel], sitk.sitkNearestNeighbor)
    return on_grid, lesion_volume_ml(mask)


def write_case(layout: FomoLayout, case: FomoCase, channels: Sequence[str], images_dir: Path, labels_dir: Path,
               nan_to_zero: bool) -> WrittenCase:
    """Write one case's channels (a zero image for a missing one) and its label map in nnU-Net's naming, in RAS."""
    images, nonfinite = case_images(layout, case, nan_to_zero, require_volumes=True)
    label_map, lesion_volume = case_label_map(layout, case, images)
    label_map = to_ras(label_map)
    images = {channel: to_ras(image) for channel, image in images.items()}
    files = case_files(case.case_id, len(channels), images_dir, labels_dir)
    for index, channel in enumerate(channels):
        image = images.get(channel)
        if image is None:  # missing modality under the "zeros" strategy; zero is background to nnU-Net
            image = sitk.Image(label_map.GetSize(), sitk.sitkFloat32)
            image.CopyInformation(label_map)
        sitk.WriteImage(image, str(files[index]), useCompression=True)
    sitk.WriteImage(label_map, str(files[-1]), useCompression=True)
    return WrittenCase(tuple(label_map.GetSpacing()), tuple(label_map.GetSize()), nonfinite, lesion_volume)


def case_files(case_id: str, n_channels: int, images_dir: Path, labels_dir: Path) -> List[Path]:
    """The files :func:`write_case` writes for ``case_id``: its channels, then its label map."""
    return [images_dir / f"{case_id}_{index:04d}{FILE_ENDING}" for index in range(n_channels)] + \
        [labels_dir / f"{case_id}{FILE_ENDING}"]


def move_case(case_id: str, n_channels: int, source: Tuple[Path, Path], target: Tuple[Path, Path]) -> None:
    """Move a written case's files from one (images, labels) folder pair to another (a rename, no copy)."""
    for old, new in zip(case_files(case_id, n_channels, *source), case_files(case_id, n_channels, *target)):
        old.rename(new)


def split_cases(cases: List[FomoCase], targets: Dict[str, float], task: TaskSpec, test_fraction: float,
                seed: int, n_folds: int,
                train_fraction: float = 1.0) -> Tuple[List[str], List[str], List[Dict[str, List[str]]]]:
    """(train ids, test ids, folds of the train ids), all grouped by subject and stratified by target. With
    ``train_fraction`` below 1, the train ids are that share of the subjects left after the test split (the test set
    is the one of a full conversion with the same seed); the other cases are in neither list."""
    subject = {case.case_id: case.subject for case in cases}
    train = sorted(subject)
    test: List[str] = []

    def strata_of(ids: List[str]) -> Tuple[List[str], np.ndarray]:
        groups = [subject[c] for c in ids]
        return groups, stratification_labels(task.task_type, [targets[c] for c in ids], groups, n_folds)

    if test_fraction > 0:
        train, test = split_test_set(train, *strata_of(train), test_fraction, seed)
    if train_fraction < 1:
        train = subsample_subjects(train, *strata_of(train), train_fraction, seed)
    folds = make_splits(train, *strata_of(train), n_folds, seed)
    return train, test, folds


def fomo_metadata(task: TaskSpec, layout: FomoLayout, cases: List[FomoCase], targets: Dict[str, float],
                  test: List[str], missing: Dict[str, List[str]], strategy: str, train_fraction: float = 1.0,
                  left_out: int = 0) -> dict:
    """The ``fomo`` block of dataset.json (see docs/design.md)."""
    return {
        "task_id": task.task_id,
        "task_type": task.task_type,
        "target_name": task.target_name,
        "num_classes": task.num_classes,
        "label_map": TARGET_MASK if task.task_type == SEGMENTATION else BRAIN_MASK,
        "targets": {c: targets[c] for c in sorted(targets) if c not in test},
        "test_targets": {c: targets[c] for c in test},
        "subjects": {case.case_id: case.subject for case in cases},
        "missing_modalities": missing,
        "missing_modality_strategy": strategy,
        "source": {"layout": layout.name, "input": str(layout.root)},
        "train_fraction": train_fraction,
        "left_out_cases": left_out,
    }


def target_outliers(targets: Dict[str, float]) -> Dict[str, float]:
    """Cases whose target lies beyond Tukey's far-out fences (:data:`OUTLIER_IQR_FACTOR` IQR beyond the quartiles)."""
    values = np.array(list(targets.values()), dtype=float)
    q1, q3 = np.percentile(values, [25, 75])
    low, high = q1 - OUTLIER_IQR_FACTOR * (q3 - q1), q3 + OUTLIER_IQR_FACTOR * (q3 - q1)
    return {case_id: value for case_id, value in sorted(targets.items()) if not low <= value <= high}


def summary(written: Dict[str, WrittenCase], test: List[str], channels: Sequence[str], targets: Dict[str, float],
            task: TaskSpec) -> str:
    """A human-readable account of the converted dataset: cases, channels, spacings, shapes, targets."""
    spacings = np.array([w.spacing for w in written.values()])
    shapes = np.array([w.shape for w in written.values()])
    values = np.array(list(targets.values()))
    if task.task_type == CLASSIFICATION:
        classes, counts = np.unique(values.astype(int), return_counts=True)
        target_text = ", ".join(f"class {k}: {n}" for k, n in zip(classes, counts))
    else:
        unit = "ml" if task.task_type == SEGMENTATION else "years"
        target_text = (f"min {values.min():.1f}, median {np.median(values):.1f}, mean {values.mean():.1f}, "
                       f"max {values.max():.1f} {unit}")
        outliers = target_outliers(targets)
        if outliers:
            target_text += (f"; far outside the others (Tukey fences at {OUTLIER_IQR_FACTOR:g} IQR), check them: "
                            + ", ".join(f"{case_id} ({value:g})" for case_id, value in outliers.items()))
    lines = [
        f"cases: {len(written)} ({len(written) - len(test)} training, {len(test)} test)",
        f"channels: {', '.join(channels)}",
        f"spacing (mm): min {spacings.min(0).round(2).tolist()}, max {spacings.max(0).round(2).tolist()}",
        f"shape: min {shapes.min(0).tolist()}, median {np.median(shapes, 0).astype(int).tolist()}, "
        f"max {shapes.max(0).tolist()}",
        f"{task.target_name}: {target_text}",
        f"NaN/Inf voxels set to 0: {sum(w.nonfinite_voxels for w in written.values())}",
    ]
    return "\n".join(lines)


def convert_fomo_dataset(task_id: int, input_dir: os.PathLike | str, dataset_id: int, name: Optional[str] = None,
                         test_fraction: float = 0.0, seed: int = 0, overwrite: bool = False,
                         missing_modality: str = MISSING_ZEROS, nan_policy: str = NAN_ERROR,
                         spacing: Optional[Sequence[float]] = None, n_folds: int = N_FOLDS,
                         train_fraction: float = 1.0) -> Path:
    """Convert one FOMO task folder into the nnU-Net raw dataset ``$nnUNet_raw/Dataset{dataset_id:03d}_{name}``.

    Parameters
    ----------
    task_id : FOMO task 1, 2 or 3.
    input_dir : a FOMO task folder (NIfTI layout) or a folder of .npy arrays (see ``fomo_reader``).
    dataset_id, name : nnU-Net dataset id and name (default: the task's name from ``tasks.py``).
    test_fraction : share of subjects held out in imagesTs/labelsTs (0: none).
    seed : seed of the test split and of the folds.
    overwrite : replace an existing dataset of that id and name (only once the new one is complete).
    missing_modality : ``zeros``, ``drop`` or ``error`` for cases lacking a modality others have.
    nan_policy : ``error`` refuses NaN/Inf voxels, ``zero`` replaces them by 0.
    spacing : voxel spacing (X, Y, Z) of .npy arrays, instead of their .pkl.
    n_folds : number of cross-validation folds in splits_final.json.
    train_fraction : share of the subjects outside the test set kept for training (1: all); the others are left out
        of the dataset, so that a label-efficiency run is scored on the test set of the full conversion.

    Returns the dataset folder.
    """
    task = get_task(task_id)
    if missing_modality not in MISSING_STRATEGIES or nan_policy not in NAN_POLICIES:
        raise ValueError(f"missing_modality must be one of {MISSING_STRATEGIES} and nan_policy one of {NAN_POLICIES}")
    output = dataset_folder(dataset_id, name or task.name, overwrite)
    layout = detect_layout(Path(input_dir).resolve(), task, spacing)
    log.info("found the %s layout in %s", layout.name, layout.root)
    channels, cases, missing = resolve_channels(layout.discover(), task, missing_modality)
    # Tasks 1 and 3: the targets (label.txt) before any image, so that a bad one fails at once. Task 2's target is
    # the lesion volume, measured on the mask as the case is written (one read of each mask). The split needs every
    # target: cases are written to imagesTr, and the test cases then move to imagesTs.
    segmentation = task.task_type == SEGMENTATION
    targets = {} if segmentation else {case.case_id: read_target(case.label, task)
                                       for case in tqdm(cases, desc="reading targets")}
    with atomic_directory(output, overwrite=overwrite) as tmp:
        folders = {part: (tmp / f"images{part}", tmp / f"labels{part}") for part in ("Tr", "Ts")}
        for images_dir, labels_dir in folders.values():
            images_dir.mkdir()
            labels_dir.mkdir()
        written = {case.case_id: write_case(layout, case, channels, *folders["Tr"], nan_policy == NAN_ZERO)
                   for case in tqdm(cases, desc="converting cases")}
        if segmentation:
            targets = {case_id: w.lesion_volume_ml for case_id, w in written.items()}
        train, test, folds = split_cases(cases, targets, task, test_fraction, seed, n_folds, train_fraction)
        for case_id in test:
            move_case(case_id, len(channels), folders["Tr"], folders["Ts"])
        # (--train-fraction) written first all the same: Task 2's strata are the lesion volumes measured on writing
        left_out = set(written) - set(train) - set(test)
        for case_id in left_out:
            for path in case_files(case_id, len(channels), *folders["Tr"]):
                path.unlink()
        cases = [case for case in cases if case.case_id not in left_out]
        targets, written, missing = ({case_id: value for case_id, value in by_case.items() if case_id not in left_out}
                                     for by_case in (targets, written, missing))
        label_name = task.target_name if task.task_type == SEGMENTATION else BRAIN_LABEL
        generate_dataset_json(
            str(tmp), dict(enumerate(channels)), {"background": 0, label_name: 1}, len(train), FILE_ENDING,
            dataset_name=output.name, description=f"FOMO25 task {task.task_id} ({task.target_name})",
            converted_by="fomo_convert",
            **{FOMO_KEY: fomo_metadata(task, layout, cases, targets, test, missing, missing_modality, train_fraction,
                                       len(left_out))},
        )
        atomic_write_json(tmp / SPLITS_FILE, folds)
    log.info("wrote %s\n%s", output, summary(written, test, channels, targets, task))
    if left_out:
        log.info("left out: %d case(s) of the training subjects (--train-fraction %g)", len(left_out), train_fraction)
    return output


def task_choice(text: str) -> int | str:
    """``--task``: a FOMO task id or :data:`POOL_TASK`."""
    if text == POOL_TASK:
        return text
    try:
        return get_task(int(text)).task_id
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1, 2, 3 or {POOL_TASK}, got {text!r}") from None


#: Options of the task conversion that an unlabelled pool has no use for (each would be silently ignored).
_TASK_ONLY_OPTIONS = {"test_fraction": "--test-fraction", "missing_modality": "--missing-modality",
                      "spacing": "--spacing", "train_fraction": "--train-fraction"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fomo_convert",
        description="Convert FOMO25 fine-tuning data (NIfTI or .npy layout) into an nnU-Net raw dataset "
                    "$nnUNet_raw/DatasetXXX_NAME with stratified, subject-grouped splits_final.json.")
    parser.add_argument("--task", type=task_choice, required=True,
                        help=f"FOMO25 task id (1, 2, 3), or {POOL_TASK} for an unlabelled pool of scans in the FOMO60K "
                             "layout (sub_<N>/ses_<M>/<sequence>.nii.gz), one single-channel case per scan")
    parser.add_argument("-i", "--input", required=True,
                        help="FOMO task folder (preprocessed/ and labels/), a folder of sub_<N>.npy arrays, or "
                             f"(--task {POOL_TASK}) the folder of the sub_<N> folders")
    parser.add_argument("-d", "--dataset-id", type=int_in(1, MAX_DATASET_ID), required=True,
                        help=f"nnU-Net dataset id (1-{MAX_DATASET_ID}), not used by another dataset in nnUNet_raw, "
                             "nnUNet_preprocessed or nnUNet_results")
    parser.add_argument("-n", "--name", default=None,
                        help="dataset name: letters, digits, '_' and '-' (default: the task's name, e.g. FOMOInfarct)")
    parser.add_argument("--test-fraction", type=float_in(0.0, MAX_TEST_FRACTION), default=0.0,
                        help=f"share of subjects held out as imagesTs/labelsTs, in [0, {MAX_TEST_FRACTION}], "
                             "stratified and grouped like the folds (default: %(default)s, no test set)")
    parser.add_argument("--train-fraction", type=fraction, default=None,
                        help="share of the subjects outside the test set kept for training and the folds, "
                             "stratified and grouped like them; the others are left out of the dataset, and the "
                             "test set stays that of the full conversion with the same seed (label-efficiency "
                             "runs; default: 1, all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test split and the folds (default: %(default)s)")
    parser.add_argument("--folds", type=int_at_least(MIN_FOLDS), default=N_FOLDS,
                        help=f"number of cross-validation folds, at least {MIN_FOLDS} (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that id and name")
    parser.add_argument("--missing-modality", choices=MISSING_STRATEGIES, default=None,
                        help=f"cases lacking a modality: zero image, leave the case out, or stop (default: "
                             f"{MISSING_ZEROS}; tasks 1-3 only)")
    parser.add_argument("--nan-to-zero", action="store_true", help="replace NaN/Inf voxels by 0 instead of stopping")
    parser.add_argument("--spacing", type=positive_float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                        help="voxel spacing in mm of .npy arrays (instead of their companion .pkl)")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.task == POOL_TASK:
        given = [flag for option, flag in _TASK_ONLY_OPTIONS.items() if getattr(args, option)]
        if given:
            raise FomoInputError(f"{', '.join(given)} apply to tasks 1-3, not to --task {POOL_TASK} (an unlabelled "
                                 "pool has no test set, one channel per case and NIfTI input)")
        output = dataset_folder(args.dataset_id, args.name or POOL_NAME, args.overwrite)
        convert_pretraining_pool(args.input, output, args.seed, args.overwrite, args.nan_to_zero, args.folds)
        return 0
    convert_fomo_dataset(args.task, args.input, args.dataset_id, args.name, args.test_fraction, args.seed,
                         args.overwrite, args.missing_modality or MISSING_ZEROS,
                         NAN_ZERO if args.nan_to_zero else NAN_ERROR, args.spacing, args.folds,
                         1.0 if args.train_fraction is None else args.train_fraction)
    return 0

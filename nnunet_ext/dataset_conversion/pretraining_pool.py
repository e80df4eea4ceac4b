"""``fomo_convert --task pretrain``: an unlabelled pool of scans (the FOMO60K layout) -> an nnU-Net raw dataset.

FOMO60K lays out ``sub_<N>/ses_<M>/<sequence>.nii.gz``: any number of sessions, any sequences, no labels. The FOMO
pretraining treats every scan as one single-channel sample whatever its sequence, so each scan becomes one case
(``sub_<N>_ses_<M>_<sequence>``) with one channel; its non-zero (brain) mask is the label map nnU-Net needs to
plan. The reader and the image checks are the tasks' (unreadable files, one scan under two names, geometry,
NaN/Inf voxels, slices too thin to be a volume); images are stored in RAS. Subjects, never scans, are the unit of
``splits_final.json``, and dataset.json's ``fomo.subjects`` lets the pretraining trainer hold out whole subjects.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import SimpleITK as sitk
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from tqdm import tqdm

from nnunet_ext.dataset_conversion.fomo_reader import (
    IMAGES_DIR,
    SUBJECT_PATTERN,
    NiftiLayout,
    check_distinct_files,
    checked_intensities,
    nifti_files,
    numbered_dirs,
    read_nifti,
    to_ras,
)
from nnunet_ext.dataset_conversion.image_checks import check_readable_file, check_volume_shape
from nnunet_ext.dataset_conversion.splits import N_FOLDS, SPLITS_FILE, make_splits
from nnunet_ext.dataset_conversion.tasks import FOMO_KEY, POOL_TASK, PRETRAINING
from nnunet_ext.errors import FomoInputError
from nnunet_ext.utils.files import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

#: Default dataset name.
POOL_NAME = "FOMOPretrainingPool"
#: The one channel: any MRI sequence (the pretraining normalisation applies to every channel alike).
SCAN_CHANNEL = "MRI"
BRAIN_LABEL = "brain"
FILE_ENDING = ".nii.gz"
#: Characters of a sequence name kept in a case id (nnU-Net case ids become file names).
_UNSAFE_IN_CASE_ID = re.compile(r"[^A-Za-z0-9]+")


@dataclass(frozen=True)
class PoolScan:
    """One scan of the pool, as found on disk."""

    case_id: str  # sub_<N>_ses_<M>_<sequence>
    subject: str  # sub_<N>
    sequence: str  # the file's lower-case stem
    path: Path


def pool_images_root(root: Path) -> Path:
    """The folder holding the ``sub_<N>`` folders: ``root`` itself (FOMO60K), or its ``preprocessed/`` (the tasks'
    layout)."""
    if not root.exists():
        raise FomoInputError("input folder does not exist", root)
    if not root.is_dir():
        raise FomoInputError("input is a file, not a folder", root)
    nested = root / IMAGES_DIR
    return nested if nested.is_dir() and not numbered_dirs(root, SUBJECT_PATTERN) else root


def discover_pool(root: Path) -> List[PoolScan]:
    """Every scan under ``root`` without reading one; refuses a pool without subjects and a session without scans."""
    images_root = pool_images_root(root)
    subjects = numbered_dirs(images_root, SUBJECT_PATTERN)
    if not subjects:
        raise FomoInputError("no sub_<N> folders found (expected sub_<N>/ses_<M>/<sequence>.nii.gz)", images_root)
    scans = []
    for subject, subject_dir in subjects.items():
        for session, folder in NiftiLayout.sessions(subject_dir).items():
            files = {stem: check_readable_file(path) for stem, path in nifti_files(folder).items()}
            if not files:
                raise FomoInputError("no NIfTI scan in this session folder", folder)
            check_distinct_files(files, folder)
            for stem, path in files.items():
                sequence = _UNSAFE_IN_CASE_ID.sub("", stem)
                scans.append(PoolScan(f"{subject}_{session}_{sequence}", subject, stem, path))
    duplicates = sorted({s.case_id for s in scans if sum(t.case_id == s.case_id for t in scans) > 1})
    if duplicates:
        raise FomoInputError(f"sequence names that differ only in punctuation give one case id twice: {duplicates}",
                             root)
    return scans


def write_scan(scan: PoolScan, images_dir: Path, labels_dir: Path, nan_to_zero: bool) -> tuple:
    """Write one scan (RAS) and its non-zero mask in nnU-Net's naming; returns its (spacing, shape)."""
    image = read_nifti(scan.path)
    check_volume_shape(image.GetSize(), scan.path)
    image, _ = checked_intensities(image, scan.path, nan_to_zero)
    image = to_ras(image)
    brain = sitk.GetImageFromArray((sitk.GetArrayViewFromImage(image) != 0).astype(np.uint8))
    brain.CopyInformation(image)
    sitk.WriteImage(image, str(images_dir / f"{scan.case_id}_0000{FILE_ENDING}"), useCompression=True)
    sitk.WriteImage(brain, str(labels_dir / f"{scan.case_id}{FILE_ENDING}"), useCompression=True)
    return tuple(image.GetSpacing()), tuple(image.GetSize())


def pool_splits(scans: Sequence[PoolScan], n_folds: int, seed: int) -> List[Dict[str, List[str]]]:
    """Subject-grouped folds of the scans (as many as there are subjects, up to ``n_folds``)."""
    n_subjects = len({scan.subject for scan in scans})
    if n_subjects < 2:
        raise FomoInputError(f"a pool of {n_subjects} subject cannot be split: pretraining holds out whole subjects "
                             "for its validation loss, so at least 2 are needed")
    ids = [scan.case_id for scan in scans]
    return make_splits(ids, [scan.subject for scan in scans], [0] * len(ids), min(n_folds, n_subjects), seed)


def convert_pretraining_pool(input_dir: os.PathLike | str, output: Path, seed: int = 0, overwrite: bool = False,
                             nan_to_zero: bool = False, n_folds: int = N_FOLDS) -> Path:
    """Convert the pool under ``input_dir`` into the (not yet existing, or replaced) dataset folder ``output``."""
    root = Path(input_dir).resolve()
    scans = discover_pool(root)
    folds = pool_splits(scans, n_folds, seed)
    log.info("found %d scans of %d subjects in %s", len(scans), len({s.subject for s in scans}), root)
    with atomic_directory(output, overwrite=overwrite) as tmp:
        images_dir, labels_dir = tmp / "imagesTr", tmp / "labelsTr"
        images_dir.mkdir()
        labels_dir.mkdir()
        written = {scan.case_id: write_scan(scan, images_dir, labels_dir, nan_to_zero)
                   for scan in tqdm(scans, desc="converting scans")}
        generate_dataset_json(
            str(tmp), {0: SCAN_CHANNEL}, {"background": 0, BRAIN_LABEL: 1}, len(scans), FILE_ENDING,
            dataset_name=output.name, description="unlabelled MRI for self-supervised pretraining (masked image "
                                                  "modelling); every scan is one single-channel case",
            converted_by="fomo_convert --task pretrain",
            **{FOMO_KEY: {"task_id": POOL_TASK, "task_type": PRETRAINING, "num_classes": 1,
                          "label_map": "brain_mask", "subjects": {s.case_id: s.subject for s in scans},
                          "sequences": {s.case_id: s.sequence for s in scans},
                          "source": {"layout": "fomo60k", "input": str(root)}}})
        atomic_write_json(tmp / SPLITS_FILE, folds)
    log.info("wrote %s\n%s", output, pool_summary(scans, written))
    return output


def pool_summary(scans: Sequence[PoolScan], written: Dict[str, tuple]) -> str:
    """Scans, subjects, sequences, spacings and shapes of a converted pool."""
    sequences: Dict[str, int] = {}
    for scan in scans:
        sequences[scan.sequence] = sequences.get(scan.sequence, 0) + 1
    spacings = np.array([spacing for spacing, _ in written.values()])
    shapes = np.array([shape for _, shape in written.values()])
    return "\n".join([
        f"scans: {len(scans)} of {len({s.subject for s in scans})} subjects",
        f"sequences: {', '.join(f'{name} {count}' for name, count in sorted(sequences.items()))}",
        f"spacing (mm): min {spacings.min(0).round(2).tolist()}, max {spacings.max(0).round(2).tolist()}",
        f"shape: min {shapes.min(0).tolist()}, median {np.median(shapes, 0).astype(int).tolist()}, "
        f"max {shapes.max(0).tolist()}",
    ])

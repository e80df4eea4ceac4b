"""Tiny hand-made FOMO inputs for the conversion tests: NIfTI writing and a case-by-case FOMO tree builder."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from nnunet_ext.dataset_conversion.fomo_reader import RAS_DIRECTION
from nnunet_ext.dataset_conversion.tasks import SEGMENTATION, get_task

TINY_SHAPE = (12, 10, 8)
#: nibabel's affine of a 1 mm RAS image at the origin.
NIFTI_RAS_AFFINE = np.eye(4)
#: label.txt content written when a test gives none: infarct present (Task 1), age 50 (Task 3).
DEFAULT_TARGETS = {1: 1, 3: 50.0}


def write_nifti(path: Path, array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                origin: Sequence[float] = (0.0, 0.0, 0.0), direction: Sequence[float] = RAS_DIRECTION) -> Path:
    """Write an [X, Y, Z] array as NIfTI with the given geometry (by default RAS, as FOMO distributes it)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose()))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in direction))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def write_broken_header(path: Path, zooms=(1.0, 1.0, 1.0), sform=None) -> Path:
    """A 1 mm RAS NIfTI whose header bytes are then overwritten: voxel sizes (pixdim) and, if given, the sform rows.

    Writers (nibabel, SimpleITK) refuse or repair such headers, so they are patched as bytes, as a broken
    converter would leave them.
    """
    volume = brain_volume(TINY_SHAPE, seed=0)
    header = nib.Nifti1Image(volume, NIFTI_RAS_AFFINE).header
    header.set_sform(NIFTI_RAS_AFFINE if sform is None else None, code="scanner" if sform is None else 0)
    raw = bytearray(nib.Nifti1Image(volume, None, header).to_bytes())
    struct.pack_into("<3f", raw, PIXDIM_OFFSET + 4, *zooms)
    if sform is not None:
        struct.pack_into("<h", raw, SFORM_CODE_OFFSET, 1)
        struct.pack_into("<12f", raw, SROW_OFFSET, *np.asarray(sform, dtype=float)[:3].ravel())
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


#: Byte offsets in a NIfTI-1 header (nifti1.h).
PIXDIM_OFFSET, SFORM_CODE_OFFSET, SROW_OFFSET = 76, 254, 280


def brain_volume(shape: Tuple[int, ...], seed: int) -> np.ndarray:
    """A skull-stripped-looking volume: positive noise inside a central box, zero background."""
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, dtype=np.float32)
    inner = tuple(slice(s // 4, s - s // 4) for s in shape)
    volume[inner] = 1.0 + rng.random(volume[inner].shape, dtype=np.float32)
    return volume


def central_mask(shape: Tuple[int, ...]) -> np.ndarray:
    """A small {0, 1} blob near the centre (a 'meningioma')."""
    mask = np.zeros(shape, dtype=np.uint8)
    mask[tuple(slice(s // 2 - 1, s // 2 + 1) for s in shape)] = 1
    return mask


class FomoTree:
    """Builds a tiny FOMO task folder (NIfTI layout) case by case."""

    def __init__(self, root: Path, task_id: int):
        self.root = root
        self.task = get_task(task_id)

    def add_case(self, subject: str, label: object = None, session: Optional[str] = "ses_1",
                 stems: Optional[Sequence[str]] = None, shape: Tuple[int, ...] = TINY_SHAPE,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0), seed: int = 0) -> Dict[str, Path]:
        """Write one case; ``label`` defaults to 1 (Task 1), 50.0 (Task 3) or a central mask (Task 2).

        ``stems`` defaults to the first stem of every channel. Returns the written files by stem/``label``.
        """
        stems = [c.stems[0] for c in self.task.channels] if stems is None else stems
        image_dir = self.root / "preprocessed" / subject / (session or "")
        label_dir = self.root / "labels" / subject / (session or "")
        files = {stem: write_nifti(image_dir / f"{stem}.nii.gz", brain_volume(shape, seed + i), spacing)
                 for i, stem in enumerate(stems)}
        label_path = label_dir / self.task.label_file
        if self.task.task_type == SEGMENTATION:
            write_nifti(label_path, central_mask(shape) if label is None else label, spacing)
        else:
            label_path.parent.mkdir(parents=True, exist_ok=True)
            label_path.write_text(f"{DEFAULT_TARGETS[self.task.task_id] if label is None else label}\n")
        files["label"] = label_path
        return files

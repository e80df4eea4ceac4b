"""Synthetic FOMO25 fine-tuning data in the exact layout of the distributed data (``fomo_make_synthetic``).

The data lets the whole pipeline (conversion, planning, training, evaluation) run without the real,
access-controlled FOMO data, and carries a signal a 3D CNN can learn::

    OUT/preprocessed/sub_<N>/ses_<M>/<stem>.nii.gz     stems and channel order from ``tasks.py``
    OUT/labels/sub_<N>/ses_<M>/label.txt               task 1: "0" or "1"; task 3: age in years ("63.4")
    OUT/labels/sub_<N>/ses_<M>/seg.nii.gz              task 2: uint8 mask, 0 background, 1 meningioma

Subjects are numbered from 1. Every subject is a brain phantom: an ellipsoidal skull-stripped brain on an
exact-zero background with white matter, a cortical ribbon folded by sulci, deep grey nuclei, lateral
ventricles and surface CSF; tissue contrast per sequence (T1: white matter bright; T2: CSF bright; FLAIR:
CSF dark; DWI; ADC: CSF bright), partial volume at tissue borders, a smooth multiplicative bias field and
Rician noise. The signal per task:

- Task 1 (infarct): positives carry an irregular lesion in one hemisphere, bright on DWI and FLAIR, dark
  on ADC, barely visible on SWI/T2*; negatives none. Classes come in blocks of 21 subjects holding 13
  positives and 8 negatives (the real ratio), the first two subjects of a block always of both classes.
- Task 2 (meningioma): every subject has a roughly spherical extra-axial mass of varying size centred on
  the brain surface (half or more of it outside the brain, indenting it), bright on FLAIR and DWI; a large
  one near the vertex may be cut by the field of view, as in real scans.
- Task 3 (brain age): age uniform in 20-85 years; with age the ventricles widen, the cortex thins and the
  surface and sulcal CSF grows, each with its own subject-level deviation, so that age is predictable
  from anatomy but not exactly.

Quirks of real data that a converter must handle (all deterministic for a seed):

- Shapes differ between subjects (each axis jittered by up to 8 %); the phantom is defined in millimetres,
  so the voxel grid only samples it.
- Anisotropic subjects: slices 4x thicker in z and 4x fewer of them; the spacing is stored in the affine.
- Non-RAS subjects: arrays stored in another orientation (LPS, PSR, LAS or AIL), the affine changed with
  them so that the physical content is identical (reorienting to RAS gives back the RAS phantom).
- Tasks 1 and 2: the SWI-or-T2* channel is ``swi`` in some subjects and ``t2s`` in others.
- Task 1: an occasional subject lacks one modality (never DWI).
- A few subjects have a second session ``ses_2`` (a slightly different image: new noise and bias field,
  the head shifted by about a millimetre, for task 3 one to three years older, for task 2 a slightly
  larger mass); ``ses_2`` has its own label file.
- Storage: float32 in some subjects, int16 in others, each sequence with its own arbitrary intensity
  scale (as scanners differ), so that intensity normalisation matters. All intensities are non-negative.
- All sequences of a session share one grid (co-registered): same shape, same affine, same brain mask.

Quirks are scheduled in blocks of 10 subjects and every other random choice comes from a generator
seeded with ``[seed, subject]`` (``[seed, subject, session]`` for per-session noise), so a subject does not
change when ``--cases`` changes.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, ornt_transform
from scipy import ndimage
from tqdm import tqdm

from nnunet_ext.dataset_conversion.tasks import (
    CLASSIFICATION,
    POOL_TASK,
    REGRESSION,
    SEGMENTATION,
    TASKS,
    TaskSpec,
    get_task,
)
from nnunet_ext.errors import FomoInputError, cli_entry
from nnunet_ext.utils.files import atomic_directory

Shape3 = tuple[int, int, int]

# --- grid -----------------------------------------------------------------------------------------------
DEFAULT_SHAPE: Shape3 = (48, 56, 48)
DEFAULT_CASES = 20
#: ``--task pretrain``: the pool's subjects are numbered from here, apart from every task's (tasks number from 1).
POOL_FIRST_SUBJECT = 10001
#: The pool's subjects cycle through the tasks' generators, so that it holds every sequence the tasks use (and
#: brains of every age, with and without lesions), none of them labelled.
POOL_GENERATORS = (3, 1, 2)
#: Smallest accepted grid edge: an anisotropic subject keeps a quarter of it in z.
MIN_SHAPE = 16
#: Half-axes of an adult brain (left-right, posterior-anterior, inferior-superior).
BRAIN_SEMI_AXES_MM = np.array([68.0, 84.0, 58.0])
#: The field of view exceeds the brain by this factor, leaving room for extra-axial masses.
FIELD_OF_VIEW_MARGIN = 1.3
SHAPE_JITTER = 0.08
ANISOTROPY_FACTOR = 4
RAS = "RAS"
NON_RAS_ORIENTATIONS = ("LPS", "PSR", "LAS", "AIL")
NIFTI_XFORM_SCANNER = 1

# --- quirk schedule: how many subjects of each block of QUIRK_BLOCK get a quirk ---------------------------
QUIRK_BLOCK = 10
QUIRKS_PER_BLOCK: dict[str, int] = {
    "anisotropic": 3,
    "non_ras": 3,
    "t2s": 4,
    "missing_modality": 1,
    "second_session": 2,
    "int16": 5,
}
#: Task 1 classes per block: 13 positives and 8 negatives, the real data's ratio.
LABEL_BLOCK = 21
POSITIVES_PER_BLOCK = 13
#: Generator seeds ``[seed, SCHEDULE_STREAM, block, stream]`` cannot collide with ``[seed, subject(, session)]``
#: because subjects are numbered from 1. Stream 0 draws the task 1 classes, streams 1... the quirks.
SCHEDULE_STREAM = 0
LABEL_STREAM = 0

# --- anatomy ----------------------------------------------------------------------------------------------
BACKGROUND, CSF, GREY_MATTER, WHITE_MATTER, INFARCT, MENINGIOMA = range(6)
#: Relative signal of each tissue (indexed by the constants above) per sequence.
TISSUE_CONTRAST: dict[str, tuple[float, ...]] = {
    #           bg   CSF   GM    WM   infarct meningioma
    "t1": (0.0, 0.25, 0.60, 0.85, 0.45, 0.55),
    "t2": (0.0, 1.00, 0.55, 0.40, 0.80, 0.60),
    "flair": (0.0, 0.10, 0.60, 0.45, 1.00, 0.95),
    "dwi_b1000": (0.0, 0.08, 0.50, 0.45, 1.00, 0.85),
    "adc": (0.0, 1.00, 0.35, 0.30, 0.12, 0.30),
    "swi": (0.0, 0.70, 0.50, 0.55, 0.50, 0.45),
    "t2s": (0.0, 0.80, 0.55, 0.50, 0.55, 0.50),
}
HEAD_SIZE_SD = 0.05
CENTRE_JITTER_MM = 3.0
SESSION_SHIFT_MM = 1.0
AGE_RANGE = (20.0, 85.0)
FOLLOW_UP_YEARS = (1.0, 3.0)
#: Subject-level deviation of each ageing process, in units of the whole 20-85 change.
ATROPHY_SD = 0.2
# (young, old) values, interpolated with the subject's atrophy.
CORTEX_MM = (4.5, 2.5)
SURFACE_CSF_MM = (1.5, 5.0)
#: Fraction of the cortical ribbon's folding pattern that is sulcal CSF rises with age.
SULCUS_THRESHOLD = (0.6, 0.2)
VENTRICLE_SEMI_AXES_MM = ((6.0, 22.0, 8.0), (10.0, 28.0, 12.0))
VENTRICLE_CENTRE_MM = (10.0, 4.0, 10.0)  # |x|, y, z
DEEP_GREY_CENTRE_MM = (22.0, 0.0, 0.0)
DEEP_GREY_SEMI_AXES_MM = (9.0, 14.0, 10.0)
FOLD_WAVELENGTH_MM = (14.0, 20.0)
INFARCT_RADIUS_MM = (10.0, 20.0)
#: Range of the infarct centre as fractions of the brain's half-axes (|x| away from the midline, y, z).
INFARCT_CENTRE_RANGE = ((0.3, -0.5, -0.3), (0.6, 0.5, 0.5))
INFARCT_MAX_LOBES = 3
#: Extra lobes are smaller (down to this fraction) and scattered by this fraction of the first radius.
INFARCT_LOBE_SHRINK = 0.6
INFARCT_LOBE_SCATTER = 0.5
#: Infarcts stay this far from the midline, in one hemisphere.
MIDLINE_MARGIN_MM = 4.0
MENINGIOMA_RADIUS_MM = (8.0, 22.0)
#: The mass centre lies up to this fraction of its radius outside the brain surface.
MENINGIOMA_OUTSIDE = 0.4
MENINGIOMA_GROWTH = 1.08

# --- image formation --------------------------------------------------------------------------------------
PARTIAL_VOLUME_SIGMA_VOXELS = 0.6
BIAS_FIELD_SD = 0.08
NOISE_SD = (0.02, 0.05)
INTENSITY_SCALE = (100.0, 3000.0)
ML_PER_MM3 = 1e-3


@dataclass(frozen=True)
class SubjectQuirks:
    """The storage quirks of one subject, shared by all its sessions."""

    shape: Shape3
    spacing: tuple[float, float, float]
    orientation: str  # axis codes of the stored arrays, e.g. "RAS", "LPS", "PSR"
    stems: tuple[str, ...]  # files written, in channel order
    missing: tuple[str, ...]  # stems left out
    n_sessions: int
    dtype: str  # "float32" or "int16"
    #: Physical size of the head relative to an adult's; the voxels (and so the arrays) do not change.
    scale: float = 1.0


@dataclass(frozen=True)
class SyntheticSession:
    """One session in RAS orientation, before it is stored in the subject's orientation."""

    session: int
    images: dict[str, np.ndarray]  # stem -> array as stored (dtype and scale applied)
    affine: np.ndarray  # RAS affine shared by every image of the session
    target: float  # task 1: class; task 2: mass volume in ml; task 3: age in years
    lesion: np.ndarray  # bool mask of the infarct or meningioma (empty where there is none)


@dataclass(frozen=True)
class SyntheticSubject:
    """One subject: its number, storage quirks and sessions."""

    subject: int
    quirks: SubjectQuirks
    sessions: tuple[SyntheticSession, ...]


@dataclass(frozen=True)
class _Lesion:
    """Union of spheres (centres in mm relative to the brain centre), optionally kept to one hemisphere."""

    centres_mm: np.ndarray  # (k, 3); k = 0 for no lesion
    radii_mm: np.ndarray  # (k,)
    hemisphere: int = 0  # +1 right, -1 left, 0 unrestricted


NO_LESION = _Lesion(np.zeros((0, 3)), np.zeros(0))


@dataclass(frozen=True)
class _Anatomy:
    """Subject-level anatomy in millimetres; sessions differ only by ageing, position and noise."""

    semi_axes_mm: np.ndarray
    centre_mm: np.ndarray
    fold_wavelength_mm: float
    fold_phases: np.ndarray
    ventricle_deviation: float
    cortex_deviation: float
    lesion: _Lesion


# --- schedule -----------------------------------------------------------------------------------------------


def _chosen_in_block(seed: int, subject: int, block_size: int, count: int, stream: int) -> bool:
    """Whether ``subject`` is one of ``count`` subjects drawn without replacement from its block."""
    block, position = divmod(subject - 1, block_size)
    rng = np.random.default_rng([seed, SCHEDULE_STREAM, block, stream])
    return bool(position in rng.choice(block_size, size=count, replace=False))


def _scheduled_quirks(seed: int, subject: int) -> dict[str, bool]:
    """Which quirks ``subject`` gets; each quirk is spread over the blocks of :data:`QUIRK_BLOCK` subjects."""
    return {
        name: _chosen_in_block(seed, subject, QUIRK_BLOCK, count, stream)
        for stream, (name, count) in enumerate(QUIRKS_PER_BLOCK.items(), start=LABEL_STREAM + 1)
    }


def is_positive(seed: int, subject: int) -> bool:
    """Task 1 class of ``subject``: 13 of every 21 subjects positive, the first two of a block of both classes."""
    block, position = divmod(subject - 1, LABEL_BLOCK)
    rng = np.random.default_rng([seed, SCHEDULE_STREAM, block, LABEL_STREAM])
    first_positive = int(rng.integers(2))
    if position < 2:
        return position == first_positive
    # The remaining 19 positions hold the other 12 positives.
    rest = rng.choice(LABEL_BLOCK - 2, size=POSITIVES_PER_BLOCK - 1, replace=False)
    return bool(position - 2 in rest)


# --- subject-level draws ---------------------------------------------------------------------------------


def _base_spacing(shape: Shape3) -> float:
    """Isotropic spacing (mm) at which ``shape`` covers the brain plus :data:`FIELD_OF_VIEW_MARGIN`."""
    return float(np.max(2 * BRAIN_SEMI_AXES_MM * FIELD_OF_VIEW_MARGIN / np.asarray(shape)))


def _draw_quirks(task: TaskSpec, flags: dict[str, bool], shape: Shape3, rng: np.random.Generator,
                 scale: float = 1.0) -> SubjectQuirks:
    spacing = np.full(3, _base_spacing(shape) * scale)
    jittered = np.round(np.asarray(shape) * rng.uniform(1 - SHAPE_JITTER, 1 + SHAPE_JITTER, size=3)).astype(int)
    if flags["anisotropic"]:
        spacing[2] *= ANISOTROPY_FACTOR
        jittered[2] = round(jittered[2] / ANISOTROPY_FACTOR)
    orientation = str(rng.choice(NON_RAS_ORIENTATIONS)) if flags["non_ras"] else RAS
    stems = tuple(c.stems[1] if flags["t2s"] and len(c.stems) > 1 else c.stems[0] for c in task.channels)
    # Never DWI: a subject without its first channel is not a case one would distribute.
    missing = (str(rng.choice(stems[1:])),) if flags["missing_modality"] and task.task_type == CLASSIFICATION else ()
    return SubjectQuirks(
        shape=tuple(int(n) for n in jittered),
        spacing=tuple(float(s) for s in spacing),
        orientation=orientation,
        stems=tuple(s for s in stems if s not in missing),
        missing=missing,
        n_sessions=2 if flags["second_session"] else 1,
        dtype="int16" if flags["int16"] else "float32",
        scale=scale,
    )


def _draw_meningioma(semi_axes: np.ndarray, rng: np.random.Generator) -> _Lesion:
    """A sphere centred on (or just outside) the brain surface, in the upper half of the brain."""
    direction = rng.normal(size=3)
    direction[2] = abs(direction[2])  # convexity and falx masses
    surface = direction / np.sqrt(np.sum((direction / semi_axes) ** 2))
    normal = surface / semi_axes**2
    normal /= np.linalg.norm(normal)
    radius = rng.uniform(*MENINGIOMA_RADIUS_MM)
    centre = surface + normal * radius * rng.uniform(0, MENINGIOMA_OUTSIDE)
    return _Lesion(centre[None], np.array([radius]))


def _draw_infarct(semi_axes: np.ndarray, rng: np.random.Generator) -> _Lesion:
    """One to :data:`INFARCT_MAX_LOBES` overlapping spheres in one hemisphere: an irregular lesion."""
    hemisphere = int(rng.choice([-1, 1]))
    centre = rng.uniform(*INFARCT_CENTRE_RANGE) * semi_axes * [hemisphere, 1, 1]
    n_lobes = int(rng.integers(1, INFARCT_MAX_LOBES + 1))
    radii = rng.uniform(*INFARCT_RADIUS_MM, size=n_lobes) * np.linspace(1, INFARCT_LOBE_SHRINK, n_lobes)
    scatter = rng.normal(scale=INFARCT_LOBE_SCATTER * radii[0], size=(n_lobes, 3))
    scatter[0] = 0  # the first lobe sits at the centre
    return _Lesion(centre + scatter, radii, hemisphere)


def _draw_anatomy(task: TaskSpec, positive: bool, rng: np.random.Generator) -> _Anatomy:
    semi_axes = BRAIN_SEMI_AXES_MM * rng.normal(1, HEAD_SIZE_SD)
    if task.task_type == SEGMENTATION:
        lesion = _draw_meningioma(semi_axes, rng)
    else:
        lesion = _draw_infarct(semi_axes, rng) if positive else NO_LESION
    return _Anatomy(
        semi_axes_mm=semi_axes,
        centre_mm=rng.uniform(-CENTRE_JITTER_MM, CENTRE_JITTER_MM, size=3),
        fold_wavelength_mm=float(rng.uniform(*FOLD_WAVELENGTH_MM)),
        fold_phases=rng.uniform(0, 2 * np.pi, size=3),
        ventricle_deviation=float(rng.normal(0, ATROPHY_SD)),
        cortex_deviation=float(rng.normal(0, ATROPHY_SD)),
        lesion=lesion,
    )


# --- phantom --------------------------------------------------------------------------------------------------


def _ras_affine(quirks: SubjectQuirks) -> np.ndarray:
    """Axis-aligned RAS affine with the grid centre at the scanner origin."""
    spacing = np.asarray(quirks.spacing)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(quirks.shape) - 1) / 2 * spacing
    return affine


def _grid_mm(affine: np.ndarray, shape: Shape3, centre: np.ndarray) -> list[np.ndarray]:
    """Broadcastable x, y, z coordinates (mm) of the voxels of an axis-aligned grid, relative to ``centre``."""
    axes = [np.arange(n) * affine[i, i] + affine[i, 3] - centre[i] for i, n in enumerate(shape)]
    return list(np.ix_(*axes))


def _ellipsoid(coords: Sequence[np.ndarray], centre: Sequence[float], semi_axes: Sequence[float]) -> np.ndarray:
    """Voxels inside an axis-aligned ellipsoid."""
    return sum(((c - m) / a) ** 2 for c, m, a in zip(coords, centre, semi_axes)) < 1


def _mirrored_pair(coords: Sequence[np.ndarray], centre: Sequence[float], semi_axes: Sequence[float]) -> np.ndarray:
    """Two ellipsoids mirrored across the midline (ventricles, deep grey nuclei)."""
    x, y, z = centre
    return _ellipsoid(coords, (x, y, z), semi_axes) | _ellipsoid(coords, (-x, y, z), semi_axes)


def _lerp(young_old: tuple, atrophy: float) -> np.ndarray:
    """Value (scalar or vector) between its young and old extremes."""
    young, old = np.asarray(young_old[0]), np.asarray(young_old[1])
    return young + (old - young) * atrophy


def _atrophy(age: float, deviation: float) -> float:
    """Fraction of the 20-85 ageing change reached at ``age`` by a subject ``deviation`` ahead of the norm."""
    return float(np.clip((age - AGE_RANGE[0]) / (AGE_RANGE[1] - AGE_RANGE[0]) + deviation, 0, 1))


def _lesion_mask(coords: Sequence[np.ndarray], lesion: _Lesion, growth: float) -> np.ndarray:
    """Voxels of ``lesion`` with its radii scaled by ``growth``."""
    mask = np.zeros(np.broadcast_shapes(*(c.shape for c in coords)), dtype=bool)
    for centre, radius in zip(lesion.centres_mm, lesion.radii_mm):
        mask |= _ellipsoid(coords, centre, [radius * growth] * 3)
    if lesion.hemisphere:
        mask &= lesion.hemisphere * coords[0] > MIDLINE_MARGIN_MM
    return mask


def _tissue_labels(coords: Sequence[np.ndarray], anatomy: _Anatomy, age: float) -> np.ndarray:
    """Tissue label per voxel (:data:`BACKGROUND` ... :data:`WHITE_MATTER`) of a healthy brain at ``age``."""
    rho = np.sqrt(sum((c / a) ** 2 for c, a in zip(coords, anatomy.semi_axes_mm)))
    # Approximate depth below the brain surface, in mm.
    depth = (1 - rho) * anatomy.semi_axes_mm.mean()
    cortex_atrophy = _atrophy(age, anatomy.cortex_deviation)
    surface_csf = _lerp(SURFACE_CSF_MM, cortex_atrophy)
    ribbon = depth < surface_csf + _lerp(CORTEX_MM, cortex_atrophy)
    waves = (np.sin(2 * np.pi * c / anatomy.fold_wavelength_mm + p) for c, p in zip(coords, anatomy.fold_phases))
    folds = math.prod(waves)
    sulci = ribbon & (folds > _lerp(SULCUS_THRESHOLD, cortex_atrophy))

    brain = rho < 1
    labels = np.full(rho.shape, BACKGROUND, dtype=np.uint8)
    labels[brain] = WHITE_MATTER
    labels[brain & ribbon] = GREY_MATTER
    labels[brain & (sulci | (depth < surface_csf))] = CSF
    labels[_mirrored_pair(coords, DEEP_GREY_CENTRE_MM, DEEP_GREY_SEMI_AXES_MM)] = GREY_MATTER
    ventricles = _lerp(VENTRICLE_SEMI_AXES_MM, _atrophy(age, anatomy.ventricle_deviation))
    labels[_mirrored_pair(coords, VENTRICLE_CENTRE_MM, ventricles)] = CSF
    return labels


def _bias_field(coords: Sequence[np.ndarray], semi_axes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field: exp of a random quadratic polynomial of the normalised coordinates."""
    u = [c / a for c, a in zip(coords, semi_axes)]
    terms = [*u, u[0] * u[1], u[1] * u[2], u[0] * u[2], u[0] ** 2, u[1] ** 2, u[2] ** 2]
    return np.exp(sum(w * t for w, t in zip(rng.normal(0, BIAS_FIELD_SD, size=len(terms)), terms)))


def _render(labels: np.ndarray, stem: str, bias: np.ndarray, dtype: str, rng: np.random.Generator) -> np.ndarray:
    """Image of one sequence: contrast, partial volume, bias field, Rician noise, zero background, scale."""
    # Blurring the contrast image equals mixing the tissue contrasts by their partial-volume fractions.
    contrast = np.asarray(TISSUE_CONTRAST[stem], dtype=np.float32)[labels]
    signal = ndimage.gaussian_filter(contrast, PARTIAL_VOLUME_SIGMA_VOXELS)
    sd = rng.uniform(*NOISE_SD)
    # Magnitude images: complex Gaussian noise gives a Rician, non-negative signal.
    image = np.hypot(signal * bias + rng.normal(0, sd, labels.shape), rng.normal(0, sd, labels.shape))
    image *= np.exp(rng.uniform(*np.log(INTENSITY_SCALE)))
    foreground = labels != BACKGROUND
    image[~foreground] = 0
    if dtype == "int16":
        # At least 1 inside the brain, so that every sequence has the same non-zero mask.
        return np.where(foreground, np.maximum(np.round(image), 1), 0).astype(np.int16)
    return image.astype(np.float32)


def _synthesize_session(task: TaskSpec, quirks: SubjectQuirks, anatomy: _Anatomy, session: int, age: float,
                        positive: bool, rng: np.random.Generator) -> SyntheticSession:
    affine = _ras_affine(quirks)
    shift = rng.normal(0, SESSION_SHIFT_MM, size=3) if session > 1 else np.zeros(3)
    # The anatomy is drawn in adult millimetres: a smaller head is the same head seen through smaller voxels.
    coords = [c / quirks.scale for c in _grid_mm(affine, quirks.shape, (anatomy.centre_mm + shift) * quirks.scale)]
    labels = _tissue_labels(coords, anatomy, age)
    if task.task_type == SEGMENTATION:
        lesion = _lesion_mask(coords, anatomy.lesion, MENINGIOMA_GROWTH ** (session - 1))
        labels[lesion] = MENINGIOMA  # extra-axial: it displaces whatever lies beneath
    else:
        # Infarcts strike parenchyma only.
        lesion = _lesion_mask(coords, anatomy.lesion, 1.0) & np.isin(labels, (GREY_MATTER, WHITE_MATTER))
        labels[lesion] = INFARCT
    bias = _bias_field(coords, anatomy.semi_axes_mm, rng)
    images = {stem: _render(labels, stem, bias, quirks.dtype, rng) for stem in quirks.stems}
    targets = {
        CLASSIFICATION: float(positive),
        SEGMENTATION: float(lesion.sum() * np.prod(quirks.spacing) * ML_PER_MM3),
        REGRESSION: age,
    }
    return SyntheticSession(session, images, affine, targets[task.task_type], lesion)


def synthesize_subject(task_id: int, subject: int, seed: int = 0, shape: Shape3 = DEFAULT_SHAPE,
                       scale: float = 1.0) -> SyntheticSubject:
    """Generate one subject in memory, in RAS orientation, exactly as :func:`make_synthetic_dataset` stores it.

    Parameters
    ----------
    task_id : int
        FOMO task, 1 (infarct), 2 (meningioma) or 3 (brain age).
    subject : int
        Subject number, from 1. The subject depends only on ``seed``, ``subject`` and ``shape``.
    seed : int
        Seed of the whole dataset.
    shape : tuple of 3 ints
        Nominal grid; each subject's grid is jittered around it (and thinned in z when anisotropic).
    scale : float
        Physical size of the head relative to an adult's (see :func:`make_synthetic_dataset`).

    Returns
    -------
    SyntheticSubject
        Its storage quirks and its sessions (images, RAS affine, target, lesion mask).
    """
    task = get_task(task_id)
    positive = task.task_type == CLASSIFICATION and is_positive(seed, subject)
    rng = np.random.default_rng([seed, subject])
    quirks = _draw_quirks(task, _scheduled_quirks(seed, subject), shape, rng, scale)
    anatomy = _draw_anatomy(task, positive, rng)
    age = float(rng.uniform(*AGE_RANGE))
    ages = [age, age + rng.uniform(*FOLLOW_UP_YEARS)][: quirks.n_sessions]
    sessions = tuple(
        _synthesize_session(task, quirks, anatomy, session, round(session_age, 1), positive,
                            np.random.default_rng([seed, subject, session]))
        for session, session_age in enumerate(ages, start=1)
    )
    return SyntheticSubject(subject, quirks, sessions)


# --- writing ----------------------------------------------------------------------------------------------------


def _save_nifti(array: np.ndarray, ras_affine: np.ndarray, orientation: str, path: Path) -> None:
    """Save a RAS array stored in ``orientation``, with the affine changed so the physical content is the same."""
    image = nib.Nifti1Image(array, ras_affine)
    if orientation != RAS:
        image = image.as_reoriented(ornt_transform(axcodes2ornt(RAS), axcodes2ornt(orientation)))
    image.set_qform(image.affine, code=NIFTI_XFORM_SCANNER)
    image.set_sform(image.affine, code=NIFTI_XFORM_SCANNER)
    nib.save(image, str(path))


def _write_subject(task: TaskSpec, subject: SyntheticSubject, root: Path) -> None:
    quirks = subject.quirks
    for session in subject.sessions:
        relative = Path(f"sub_{subject.subject}", f"ses_{session.session}")
        image_dir, label_dir = root / "preprocessed" / relative, root / "labels" / relative
        image_dir.mkdir(parents=True)
        label_dir.mkdir(parents=True)
        for stem, array in session.images.items():
            _save_nifti(array, session.affine, quirks.orientation, image_dir / f"{stem}.nii.gz")
        if task.task_type == SEGMENTATION:
            mask = session.lesion.astype(np.uint8)
            _save_nifti(mask, session.affine, quirks.orientation, label_dir / task.label_file)
        else:
            text = str(int(session.target)) if task.task_type == CLASSIFICATION else f"{session.target:.1f}"
            (label_dir / task.label_file).write_text(text + "\n")


def _subject_list(names: Sequence[str]) -> str:
    """Comma-separated names, or "none"."""
    return ", ".join(names) if names else "none"


def _summary(task: TaskSpec, out_dir: Path, subjects: Sequence[tuple[int, SubjectQuirks, list[float]]]) -> str:
    """One paragraph: cases, targets and the quirks applied."""
    n_sessions = sum(len(targets) for _, _, targets in subjects)
    first = [targets[0] for _, _, targets in subjects]
    if task.task_type == CLASSIFICATION:
        targets = f"{int(sum(first))} positive and {len(first) - int(sum(first))} negative subjects"
    elif task.task_type == SEGMENTATION:
        targets = f"mass volumes {min(first):.1f}-{max(first):.1f} ml"
    else:
        targets = f"ages {min(first):.1f}-{max(first):.1f} years (mean {np.mean(first):.1f})"

    def having(predicate: Callable[[SubjectQuirks], bool]) -> str:
        return _subject_list([f"sub_{n}" for n, q, _ in subjects if predicate(q)])

    orientations = _subject_list([f"sub_{n} ({q.orientation})" for n, q, _ in subjects if q.orientation != RAS])
    missing = _subject_list([f"sub_{n} ({', '.join(q.missing)})" for n, q, _ in subjects if q.missing])
    shapes = {q.shape for _, q, _ in subjects}
    return (
        f"Wrote {len(subjects)} subjects ({n_sessions} sessions) of task {task.task_id} ({task.name}) to {out_dir}: "
        f"{targets}. Quirks: {len(shapes)} different shapes; anisotropic (z x{ANISOTROPY_FACTOR}): "
        f"{having(lambda q: q.spacing[2] > q.spacing[0])}; non-RAS: {orientations}; "
        f"t2s instead of swi: {having(lambda q: 't2s' in q.stems + q.missing)}; missing modality: {missing}; "
        f"second session: {having(lambda q: q.n_sessions > 1)}; "
        f"int16 storage: {having(lambda q: q.dtype == 'int16')}."
    )


def make_synthetic_dataset(task_id: int, out_dir: str | Path, n_cases: int = DEFAULT_CASES, seed: int = 0,
                           shape: Shape3 = DEFAULT_SHAPE, overwrite: bool = False, scale: float = 1.0) -> Path:
    """Write a synthetic FOMO dataset for one task in the layout of the distributed data.

    Parameters
    ----------
    task_id : int
        FOMO task, 1 (infarct), 2 (meningioma) or 3 (brain age).
    out_dir : str or Path
        Output folder; it receives ``preprocessed/`` and ``labels/``. It must not exist or be empty,
        unless ``overwrite``, which replaces it once the new dataset is complete.
    n_cases : int
        Number of subjects (a few of them get a second session).
    seed : int
        Seed; the same seed gives the same data.
    shape : tuple of 3 ints
        Nominal grid (each edge at least :data:`MIN_SHAPE`); a larger grid samples the brain more finely.
    overwrite : bool
        Replace a non-empty ``out_dir``.
    scale : float
        Physical size of the heads relative to an adult's: the arrays are identical, only the voxel spacing
        shrinks. Below 1 it gives small volumes once resampled to the 1 mm of the FOMO plans, which keeps CPU
        demos and tests fast; 1 (the default) gives adult-sized brains.

    Returns
    -------
    Path
        ``out_dir``.
    """
    task = get_task(task_id)
    out_dir = _checked_output(out_dir, n_cases, shape, scale, overwrite)
    written = []
    with atomic_directory(out_dir, overwrite=True) as tmp:
        for number in tqdm(range(1, n_cases + 1), desc=f"synthetic task {task.task_id}", unit="subject"):
            subject = synthesize_subject(task.task_id, number, seed=seed, shape=tuple(shape), scale=scale)
            _write_subject(task, subject, tmp)
            written.append((number, subject.quirks, [s.target for s in subject.sessions]))
    print(_summary(task, out_dir, written))
    return out_dir


def make_synthetic_pool(out_dir: str | Path, n_subjects: int = DEFAULT_CASES, seed: int = 0,
                        shape: Shape3 = DEFAULT_SHAPE, overwrite: bool = False, scale: float = 1.0) -> Path:
    """Write an unlabelled pool of synthetic scans in the FOMO60K layout (``sub_<N>/ses_<M>/<sequence>.nii.gz``),
    for self-supervised pretraining.

    Subject ``k`` is subject ``POOL_FIRST_SUBJECT + k - 1`` of the task generator ``POOL_GENERATORS[(k - 1) % 3]``:
    the same phantoms, sequences and storage quirks as the tasks' data, never one of the tasks' subjects, and no
    label. The other parameters are those of :func:`make_synthetic_dataset`.
    """
    out_dir = _checked_output(out_dir, n_subjects, shape, scale, overwrite)
    n_scans = 0
    with atomic_directory(out_dir, overwrite=True) as tmp:
        for index in tqdm(range(n_subjects), desc="synthetic pretraining pool", unit="subject"):
            number = POOL_FIRST_SUBJECT + index
            subject = synthesize_subject(POOL_GENERATORS[index % len(POOL_GENERATORS)], number, seed=seed,
                                         shape=tuple(shape), scale=scale)
            for session in subject.sessions:
                folder = tmp / f"sub_{number}" / f"ses_{session.session}"
                folder.mkdir(parents=True)
                for stem, array in session.images.items():
                    _save_nifti(array, session.affine, subject.quirks.orientation, folder / f"{stem}.nii.gz")
                    n_scans += 1
    print(f"Wrote {n_scans} unlabelled scans of {n_subjects} subjects (sub_{POOL_FIRST_SUBJECT}.."
          f"sub_{POOL_FIRST_SUBJECT + n_subjects - 1}) to {out_dir}")
    return out_dir


def _checked_output(out_dir: str | Path, n_cases: int, shape: Shape3, scale: float, overwrite: bool) -> Path:
    """``out_dir`` as a Path, once the request is valid and the folder may be written."""
    out_dir = Path(out_dir)
    if n_cases < 1:
        raise FomoInputError(f"the number of cases must be at least 1, got {n_cases}")
    if len(shape) != 3 or min(shape) < MIN_SHAPE:
        raise FomoInputError(f"the shape must be 3 edges of at least {MIN_SHAPE} voxels, got {tuple(shape)}")
    if not 0 < scale <= 1:
        raise FomoInputError(f"the scale must be in (0, 1], got {scale}")
    if out_dir.exists() and not out_dir.is_dir():
        raise FomoInputError("the output exists and is not a folder", out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FomoInputError("the output folder is not empty; pass --overwrite to replace it", out_dir)
    return out_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fomo_make_synthetic",
        description="Write synthetic FOMO25 fine-tuning data (brain phantoms with a learnable signal and the quirks "
        "of the real data) in the layout of the distributed data.",
    )
    parser.add_argument("--task", choices=[*map(str, sorted(TASKS)), POOL_TASK], required=True,
                        help="FOMO task: 1 infarct classification, 2 meningioma segmentation, 3 brain age regression; "
                             f"{POOL_TASK}: an unlabelled pool of scans in the FOMO60K layout, for pretraining")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder (receives preprocessed/ and labels/, or the pool's sub_<N> folders); "
                             "must not exist or be empty")
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES,
                        help=f"number of subjects (default {DEFAULT_CASES}); a pool's subjects are numbered from "
                             f"{POOL_FIRST_SUBJECT}, apart from the tasks'")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed; the same seed gives the same data (default 0)")
    parser.add_argument("--shape", type=int, nargs=3, default=DEFAULT_SHAPE, metavar=("X", "Y", "Z"),
                        help="nominal grid, jittered per subject; larger samples the brain more finely "
                        f"(default {' '.join(map(str, DEFAULT_SHAPE))})")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="physical head size relative to an adult's, in (0, 1]: same arrays, smaller voxels; "
                        "small values make small volumes at the 1 mm of the FOMO plans, for fast CPU runs (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``fomo_make_synthetic``."""
    args = build_parser().parse_args(argv)
    if args.task == POOL_TASK:
        make_synthetic_pool(args.out, n_subjects=args.cases, seed=args.seed, shape=tuple(args.shape),
                            overwrite=args.overwrite, scale=args.scale)
    else:
        make_synthetic_dataset(int(args.task), args.out, n_cases=args.cases, seed=args.seed, shape=tuple(args.shape),
                               overwrite=args.overwrite, scale=args.scale)
    return 0

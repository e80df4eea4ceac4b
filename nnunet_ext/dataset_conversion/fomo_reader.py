"""Discover and read FOMO fine-tuning data in either of its two layouts.

NIfTI layout (as the challenge distributes it), ``INPUT`` being e.g. ``fomo-task1/``::

    INPUT/preprocessed/sub_<N>/[ses_<M>/]<stem>.nii.gz     one file per modality (stems from tasks.py)
    INPUT/labels/sub_<N>/[ses_<M>/]label.txt | seg.nii.gz   the target (the ses_<M> level is optional)

npy layout (yucca-style local re-preprocessed copies, ``INPUT`` being e.g. ``fomo-task2/preprocessed_2/``)::

    INPUT/sub_<N>[_ses_<M>].npy   array [C, X, Y, Z] holding every channel of the task in the task's order;
                                  task 2 may add the mask as one extra last channel; an object array of
                                  per-channel [X, Y, Z] arrays (mask last, optional) is accepted as well
    INPUT/sub_<N>[_ses_<M>].pkl   dict with the voxel spacing (X, Y, Z) under "spacing" or yucca's
                                  "new_spacing"; not needed when a spacing is given explicitly
    INPUT/../labels/...           the task folder's labels tree, as above (task 2: only when the array
                                  holds no mask channel)

The npy layout has no orientation: its arrays are taken as RAS (yucca reorients to RAS before saving them), with a
zero origin.

Converted images are stored in RAS orientation (:func:`to_ras`), whatever the orientation of the files: the
encoder was pretrained on RAS volumes, and nnU-Net itself never reorients, so a case stored e.g. as PSR would
reach the network with its axes permuted against the others.
A case without the ``ses_<M>`` level is session 1. Case ids are ``sub_<N>_ses_<M>`` with N and M as
integers, so ``sub_01`` and ``sub_1`` are the same subject and are refused as duplicates.
"""

from __future__ import annotations

import filecmp
import logging
import os
import pickle
import re
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.filebasedimages import ImageFileError

from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION, PLAUSIBLE_AGE_YEARS, TaskSpec
from nnunet_ext.dataset_conversion.image_checks import (
    SPATIAL_DIMS,
    check_intensities,
    check_readable_file,
    load_checked_nifti,
    nifti_stem,
    spatial_shape,
)
from nnunet_ext.errors import FomoInputError

log = logging.getLogger(__name__)

NIFTI_SUFFIX = ".nii.gz"
NPY_SUFFIX = ".npy"
PKL_SUFFIX = ".pkl"
IMAGES_DIR = "preprocessed"
LABELS_DIR = "labels"
SUBJECT_PATTERN = re.compile(r"sub_(\d+)")
SESSION_PATTERN = re.compile(r"ses_(\d+)")
NPY_STEM_PATTERN = re.compile(r"(sub_\d+)(?:_(ses_\d+))?")
DEFAULT_SESSION = "ses_1"
#: Option giving the voxel size of .npy arrays, named in errors.
SPACING_OPTION = "--spacing"
#: Keys of the companion .pkl that may hold the spacing, in the order they are looked up.
NPY_SPACING_KEYS = ("spacing", "new_spacing")
#: Values allowed in a class label (Task 1) and in a segmentation mask (Task 2).
BINARY_VALUES = (0, 1)
ML_PER_MM3 = 1e-3
#: Header differences below this (mm, or direction cosine) mean "the same grid": nothing is resampled.
SAME_GRID_TOLERANCE = 1e-4
#: Orientation of every converted image (SimpleITK's code for NIfTI's RAS+), as in FOMO's pretraining.
TARGET_ORIENTATION = "RAS"
#: ITK direction cosines of a RAS+ array: ITK's world is LPS, so R and A are negative axes there.
RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
#: Largest difference of direction cosines still treated as the same orientation (about 3 degrees).
MAX_DIRECTION_DEVIATION = 0.05
#: Smallest intersection-over-union of two images' physical extents still treated as co-registered.
MIN_FIELD_OF_VIEW_OVERLAP = 0.9
#: Integer storage types whose every value float32 holds exactly: such voxels keep their type (see read_nifti).
EXACT_IN_FLOAT32 = (np.int8, np.uint8, np.int16, np.uint16)


@dataclass(frozen=True)
class FomoCase:
    """One session of one subject, as found on disk (nothing is read yet)."""

    case_id: str  # sub_<N>_ses_<M>
    subject: str  # sub_<N>
    #: Present channel name -> the file that holds it (the same .npy for every channel in the npy layout).
    images: Dict[str, Path]
    #: label.txt / seg.nii.gz; None only for a Task 2 .npy whose last channel is the mask.
    label: Optional[Path]

    @property
    def mask_source(self) -> Path:
        """The file that holds a Task 2 mask: seg.nii.gz, or the .npy whose last channel it is."""
        return self.label or next(iter(self.images.values()))


def canonical_id(name: str, pattern: re.Pattern, path: Path) -> str:
    """``sub_007`` -> ``sub_7``: the id with its number as an integer, so that spellings cannot collide."""
    prefix = pattern.pattern.split("_")[0]
    match = pattern.fullmatch(name)
    if match is None:
        raise FomoInputError(f"expected a name like {prefix}_<number>, got {name!r}", path)
    return f"{prefix}_{int(match.group(1))}"


def folder_entries(folder: Path) -> List[Path]:
    """The entries of ``folder``, sorted; a folder that cannot be listed (no permission) is refused, naming it."""
    try:
        return sorted(folder.iterdir())
    except OSError as e:
        raise FomoInputError(f"cannot list the folder ({e.strerror or type(e).__name__})", folder) from None


def numbered_dirs(folder: Path, pattern: re.Pattern) -> Dict[str, Path]:
    """Subfolders of ``folder`` named by ``pattern`` (``sub_<N>`` / ``ses_<M>``), by canonical id.

    Refuses two spellings of one id (``sub_1`` and ``sub_01``) and stray folders that match no id.
    """
    found: Dict[str, Path] = {}
    for entry in (p for p in folder_entries(folder) if p.is_dir() and not p.name.startswith(".")):
        key = canonical_id(entry.name, pattern, entry)
        if key in found:
            raise FomoInputError(f"duplicate id {key}: {found[key]} names the same one", entry)
        found[key] = entry
    return found


def is_label_name(name: str, label_file: str) -> bool:
    """Whether a file named ``name`` is the label ``label_file``, matched as images are: case-insensitively, and a
    NIfTI label with either ending (``seg.nii`` or ``SEG.nii.gz`` for ``seg.nii.gz``)."""
    stem = nifti_stem(label_file)
    return nifti_stem(name) == stem if stem is not None else name.lower() == label_file.lower()


def find_label(labels_root: Path, subject_dir: str, session_dir: str, label_file: str,
               required: bool = True) -> Optional[Path]:
    """The label file of a session: in ``labels/<sub>/<ses>/``, or in ``labels/<sub>/`` for session 1, its name
    matched by :func:`is_label_name`.

    Two candidates are refused, and so is one that cannot be read; a missing label is refused when ``required``
    (naming what its folder holds instead), else None.
    """
    session_folder = labels_root / subject_dir / session_dir
    folders = [session_folder]
    if canonical_id(session_dir, SESSION_PATTERN, session_folder) == DEFAULT_SESSION:
        folders.append(labels_root / subject_dir)
    found = [path for folder in folders if folder.is_dir() for path in folder_entries(folder)
             if is_label_name(path.name, label_file)]
    if len(found) > 1:
        raise FomoInputError(f"{' and '.join(map(str, found))} are labels of one session; keep one",
                             session_folder)
    if found:
        return check_readable_file(found[0])
    if not required:
        return None
    present = [p.name for p in folder_entries(session_folder)] if session_folder.is_dir() else None
    detail = "no such folder" if present is None else f"found {', '.join(present)}" if present else "empty folder"
    raise FomoInputError(f"missing {label_file} ({detail})", session_folder / label_file)


def check_labels_have_images(labels_root: Path, cases: Sequence[FomoCase], images_root: Path,
                             label_file: str) -> None:
    """Refuse a label that no case uses: a subject or session with a label but no images would otherwise leave the
    dataset without a word."""
    if not labels_root.is_dir():
        return
    used = {case.label for case in cases}
    for path in sorted(labels_root.rglob("*")):
        if is_label_name(path.name, label_file) and path not in used:
            raise FomoInputError(f"a label without images: {images_root} holds no session it belongs to (add the "
                                 "images, or move the label out of the labels folder)", path)


def check_distinct_files(files: Mapping[str, Path], folder: Path) -> None:
    """Refuse one scan given for two channels: the same file (a link to it) or a byte-identical copy.

    Only files of equal size are compared byte by byte, so that distinct scans cost no extra read."""
    items = list(files.items())
    for index, (channel, path) in enumerate(items):
        for other_channel, other in items[index + 1:]:
            if path.stat().st_size != other.stat().st_size:
                continue
            how = ("the same file" if os.path.samefile(path, other) else
                   "identical copies" if filecmp.cmp(path, other, shallow=False) else None)
            if how:
                raise FomoInputError(f"{path.name} and {other.name} are one scan ({how}) given as both {channel} and "
                                     f"{other_channel}: each channel needs its own scan", folder)


def read_nifti(path: Path) -> sitk.Image:
    """Read a 3D NIfTI: the voxels through nibabel, the geometry through SimpleITK.

    The voxels come as float32, or in the file's own integer type where it stores unscaled integers of at most
    16 bits (:data:`EXACT_IN_FLOAT32`): nnU-Net reads both as the same float32 values, and a converted int16 scan
    stays half the size of its float32 copy (and twice as fast to compress).

    SimpleITK, which nnU-Net reads the data with, silently zero-fills a truncated .nii.gz, reads NaN voxels as 0
    and stores a zero voxel size as 1 mm; nibabel reports all three, and the geometry is checked on its view of
    the header (:func:`~nnunet_ext.dataset_conversion.image_checks.check_nifti_geometry`) before SimpleITK's
    header reader gives the geometry exactly as nnU-Net will see it.
    """
    nifti = load_checked_nifti(path)
    shape = spatial_shape(nifti.shape, path)
    header = sitk.ImageFileReader()
    header.SetFileName(str(path))
    try:
        header.ReadImageInformation()
        voxels = _voxels(nifti).reshape(shape)
    except (RuntimeError, OSError, EOFError, ValueError, zlib.error, ImageFileError) as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise FomoInputError(f"corrupt or truncated NIfTI ({reason})", path) from None
    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels.transpose()))  # SimpleITK's arrays are [Z, Y, X]
    # A single-volume 4D file: its first three axes are the image (ITK's direction matrix is then 4 x 4).
    dims = header.GetDimension()
    image.SetSpacing(header.GetSpacing()[:SPATIAL_DIMS])
    image.SetOrigin(header.GetOrigin()[:SPATIAL_DIMS])
    image.SetDirection(np.reshape(header.GetDirection(), (dims, dims))[:SPATIAL_DIMS, :SPATIAL_DIMS].ravel().tolist())
    return image


def _voxels(nifti: nib.Nifti1Image) -> np.ndarray:
    """The voxels, in their stored integer type where float32 holds them exactly and no scaling applies."""
    stored = nifti.get_data_dtype()
    scaling = nifti.dataobj.slope, nifti.dataobj.inter
    if any(np.issubdtype(stored, kind) for kind in EXACT_IN_FLOAT32) and scaling == (1.0, 0.0):
        return np.asarray(nifti.dataobj)
    return nifti.get_fdata(dtype=np.float32)


def orientation_of(image: sitk.Image) -> str:
    """The image's closest orientation code in SimpleITK's naming (``"RAS"`` for a NIfTI RAS+ image)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def to_ras(image: sitk.Image) -> sitk.Image:
    """The image in :data:`TARGET_ORIENTATION`: axes permuted and flipped, voxels untouched (no resampling).

    An image already in that orientation is returned as it is (reorienting would copy its voxels for nothing)."""
    if orientation_of(image) == TARGET_ORIENTATION:
        return image
    return sitk.DICOMOrient(image, TARGET_ORIENTATION)


def read_target(path: Path, task: TaskSpec) -> float:
    """The target in a label.txt: a class in {0, 1} (Task 1) or an age in years (Task 3)."""
    text = path.read_text().strip()
    try:
        value = float(text)
    except ValueError:
        raise FomoInputError(f"expected one number, found {text!r}", path) from None
    if not np.isfinite(value):
        raise FomoInputError(f"target is not finite: {text!r}", path)
    if task.task_type == CLASSIFICATION:
        if value not in BINARY_VALUES:
            raise FomoInputError(f"class label must be 0 or 1, found {text!r}", path)
        return int(value)
    low, high = PLAUSIBLE_AGE_YEARS
    if not low <= value <= high:
        raise FomoInputError(f"age {text!r} is outside the plausible range {low:g}-{high:g} years", path)
    return value


def check_mask(mask: sitk.Image, path: Path) -> sitk.Image:
    """Refuse a mask with values outside {0, 1}; return it as uint8."""
    values = sitk.GetArrayViewFromImage(mask)
    # np.unique would sort every voxel; comparing with the two values finds the offending ones, few to sort
    offending = values[~np.isin(values, BINARY_VALUES)]
    if offending.size:
        unexpected = np.unique(offending)
        raise FomoInputError(f"mask values must be 0 or 1, found {unexpected[:5].tolist()}", path)
    return sitk.Cast(mask, sitk.sitkUInt8)


def lesion_volume_ml(mask: sitk.Image) -> float:
    """Foreground volume of a {0, 1} mask in millilitres."""
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    return voxels * float(np.prod(mask.GetSpacing())) * ML_PER_MM3


def checked_intensities(image: sitk.Image, path: Path, nan_to_zero: bool,
                        channel: Optional[str] = None) -> Tuple[sitk.Image, int]:
    """``image`` after the intensity checks of every command (see ``image_checks.check_intensities``), and the
    number of NaN/Inf voxels set to 0."""
    array = sitk.GetArrayFromImage(image)
    count = check_intensities(array, path, nan_to_zero, channel)
    if count == 0:
        return image, 0
    fixed = sitk.GetImageFromArray(array)
    fixed.CopyInformation(image)
    return fixed, count


def _physical_extent(image: sitk.Image) -> Tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounding box (mm) of the image's voxel centres."""
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([float(c * (s - 1)) for c, s in zip(corner, image.GetSize())])
        for corner in np.ndindex(*(2,) * SPATIAL_DIMS)
    ]
    return np.min(corners, axis=0), np.max(corners, axis=0)


def _box_volume(lo: np.ndarray, hi: np.ndarray) -> float:
    # A flat axis (a single slice) has zero extent; a 1 mm floor keeps such boxes comparable.
    return float(np.prod(np.maximum(hi - lo, 1.0)))


def field_of_view_overlap(a: sitk.Image, b: sitk.Image) -> float:
    """Intersection over union of the physical extents of two images."""
    (lo_a, hi_a), (lo_b, hi_b) = _physical_extent(a), _physical_extent(b)
    lo, hi = np.maximum(lo_a, lo_b), np.minimum(hi_a, hi_b)
    inter = _box_volume(lo, np.maximum(hi, lo)) if np.all(hi >= lo) else 0.0
    return inter / (_box_volume(lo_a, hi_a) + _box_volume(lo_b, hi_b) - inter)


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether two images share size, spacing, origin and direction (up to :data:`SAME_GRID_TOLERANCE`)."""
    return a.GetSize() == b.GetSize() and all(
        np.allclose(getattr(a, g)(), getattr(b, g)(), atol=SAME_GRID_TOLERANCE)
        for g in ("GetSpacing", "GetOrigin", "GetDirection")
    )


def onto_grid(image: sitk.Image, path: Path, reference: sitk.Image, reference_path: Path, interpolator: int,
              require_co_registered: bool = True) -> sitk.Image:
    """``image`` on the grid of ``reference``: unchanged when the grids agree, resampled (in world coordinates) when
    they differ.

    ``require_co_registered``: refuse an image whose orientation or field of view is too different from the
    reference's to be the same session's co-registered scan (conversion: training data must be clean). Otherwise
    (the challenge container, which must answer for every subject) such an image is resampled all the same with a
    warning; only an image sharing no physical space with the reference is refused, as it would become all zeros.
    """
    if same_grid(image, reference):
        return image
    deviation = float(np.max(np.abs(np.subtract(image.GetDirection(), reference.GetDirection()))))
    overlap = field_of_view_overlap(image, reference)
    problems = []
    if deviation > MAX_DIRECTION_DEVIATION:
        problems.append(f"orientation differs from {reference_path.name} (direction cosines differ by "
                        f"{deviation:.3f} > {MAX_DIRECTION_DEVIATION})")
    if overlap < MIN_FIELD_OF_VIEW_OVERLAP:
        problems.append(f"field of view differs from {reference_path.name} (overlap {overlap:.2f} < "
                        f"{MIN_FIELD_OF_VIEW_OVERLAP})")
    if problems and (require_co_registered or overlap == 0):
        raise FomoInputError("; ".join(problems) + ": not co-registered", path)
    if problems:
        log.warning("%s: %s: not co-registered; resampled onto the grid of %s in world coordinates all the same",
                    path, "; ".join(problems), reference_path.name)
    else:
        log.info("%s: resampled onto the grid of %s", path, reference_path.name)
    # interpolated values of integer voxels are no integers: they resample into float32
    pixel_type = sitk.sitkFloat32 if interpolator != sitk.sitkNearestNeighbor else image.GetPixelID()
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, pixel_type)


def nifti_files(folder: Path) -> Dict[str, Path]:
    """Lower-case stem -> file of the NIfTI images in ``folder`` (``FLAIR.nii.gz``, ``flair.nii``: ``flair``).

    Matched case-insensitively, as the challenge's validator matches sequence names; two files of one stem are
    refused rather than one of them silently chosen.
    """
    files: Dict[str, Path] = {}
    for path in folder_entries(folder):
        # anything under a NIfTI name counts, a dangling link or a folder as well: its channel refuses it when read
        # (check_readable_file) rather than taking it for a missing modality
        stem = nifti_stem(path.name)
        if stem is None:
            continue
        if stem in files:
            raise FomoInputError(f"{files[stem].name} and {path.name} are both the {stem} image; keep one", folder)
        files[stem] = path
    return files


class FomoLayout(ABC):
    """One on-disk layout: finds the cases and reads their images and masks."""

    #: Short name recorded in dataset.json (``fomo.source.layout``).
    name: str

    def __init__(self, root: Path, task: TaskSpec):
        self.root = root
        self.task = task

    @abstractmethod
    def discover(self) -> List[FomoCase]:
        """Every case under :attr:`root`, without reading any image."""

    @abstractmethod
    def read_images(self, case: FomoCase) -> Dict[str, sitk.Image]:
        """The present channels of a case as images (float32, or exact integers: see read_nifti), on their own
        grids."""

    @abstractmethod
    def read_mask(self, case: FomoCase) -> sitk.Image:
        """The raw segmentation mask of a Task 2 case (values not yet checked)."""


class NiftiLayout(FomoLayout):
    """``preprocessed/sub_<N>/[ses_<M>/]<stem>.nii.gz`` with a ``labels/`` tree beside it."""

    name = "nifti"

    def discover(self) -> List[FomoCase]:
        subjects = numbered_dirs(self.root / IMAGES_DIR, SUBJECT_PATTERN)
        if not subjects:
            raise FomoInputError("no sub_<N> folders found", self.root / IMAGES_DIR)
        cases = []
        for subject, subject_dir in subjects.items():
            for session, folder in self.sessions(subject_dir).items():
                session_dir = DEFAULT_SESSION if folder == subject_dir else folder.name
                label = find_label(self.root / LABELS_DIR, subject_dir.name, session_dir, self.task.label_file)
                cases.append(FomoCase(f"{subject}_{session}", subject, self._channel_files(folder), label))
        check_labels_have_images(self.root / LABELS_DIR, cases, self.root / IMAGES_DIR, self.task.label_file)
        return cases

    @staticmethod
    def sessions(subject_dir: Path) -> Dict[str, Path]:
        """The session folders of a subject; the subject folder itself when it has no ``ses_*`` level."""
        sessions = numbered_dirs(subject_dir, SESSION_PATTERN)
        if sessions and nifti_files(subject_dir):
            raise FomoInputError("holds both ses_* folders and images; expected one or the other", subject_dir)
        return sessions or {DEFAULT_SESSION: subject_dir}

    def _channel_files(self, folder: Path) -> Dict[str, Path]:
        """Channel name -> file for the modalities present in one session folder."""
        files = nifti_files(folder)
        found = {}
        for channel in self.task.channels:
            matches = [files[stem] for stem in channel.stems if stem in files]
            if len(matches) > 1:
                raise FomoInputError(f"{' and '.join(p.name for p in matches)} both present; channel "
                                     f"{channel.name} takes one of them", folder)
            if matches:
                found[channel.name] = check_readable_file(matches[0])
        known = {stem for channel in self.task.channels for stem in channel.stems}
        if set(files) - known:
            log.warning("%s: ignoring files that are no task %d modality: %s", folder, self.task.task_id,
                        sorted(set(files) - known))
        if not found:
            raise FomoInputError(f"no task {self.task.task_id} image (expected one of {sorted(known)})", folder)
        check_distinct_files(found, folder)
        return found

    def read_images(self, case: FomoCase) -> Dict[str, sitk.Image]:
        return {channel: read_nifti(path) for channel, path in case.images.items()}

    def read_mask(self, case: FomoCase) -> sitk.Image:
        return read_nifti(case.label)


class NpyLayout(FomoLayout):
    """``sub_<N>[_ses_<M>].npy`` arrays [C, X, Y, Z] with a spacing from a companion .pkl or given explicitly."""

    name = "npy"

    def __init__(self, root: Path, task: TaskSpec, spacing: Optional[Sequence[float]] = None):
        super().__init__(root, task)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def discover(self) -> List[FomoCase]:
        cases: Dict[str, FomoCase] = {}
        for path in sorted(self.root.glob("sub_*" + NPY_SUFFIX)):
            case = self._case(path)
            if case.case_id in cases:
                first = next(iter(cases[case.case_id].images.values()))
                raise FomoInputError(f"duplicate case {case.case_id}: {first.name} and {path.name}", path)
            cases[case.case_id] = case
        check_labels_have_images(self.root.parent / LABELS_DIR, list(cases.values()), self.root, self.task.label_file)
        return [cases[k] for k in sorted(cases)]

    def _case(self, path: Path) -> FomoCase:
        stem = path.name[: -len(NPY_SUFFIX)]
        match = NPY_STEM_PATTERN.fullmatch(stem)
        if match is None:
            raise FomoInputError("expected a name like sub_<N>.npy or sub_<N>_ses_<M>.npy", path)
        subject_dir, session_dir = match.group(1), match.group(2) or DEFAULT_SESSION
        subject = canonical_id(subject_dir, SUBJECT_PATTERN, path)
        session = canonical_id(session_dir, SESSION_PATTERN, path)
        # Task 2: the mask may be the array's last channel instead of a file in the labels tree.
        mask_may_be_in_array = self.task.label_file.endswith(NIFTI_SUFFIX)
        label = find_label(self.root.parent / LABELS_DIR, subject_dir, session_dir, self.task.label_file,
                           required=not mask_may_be_in_array)
        return FomoCase(f"{subject}_{session}", subject, {c: path for c in self.task.channel_names}, label)

    def _channels(self, path: Path) -> List[np.ndarray]:
        """The arrays of one .npy, one [X, Y, Z] array per channel (images, then the mask if there is one)."""
        try:
            array = np.load(path, allow_pickle=True)  # object arrays (per-channel arrays) need pickle
        except (OSError, ValueError, pickle.UnpicklingError) as e:
            raise FomoInputError(f"cannot read .npy ({e})", path) from None
        channels = [np.asarray(c) for c in array]
        n_images = len(self.task.channels)
        if len(channels) not in (n_images, n_images + 1) or any(c.ndim != SPATIAL_DIMS for c in channels):
            raise FomoInputError(f"expected [C, X, Y, Z] with C = {n_images} (or {n_images + 1} with the mask last), "
                                 f"found {len(channels)} channels of shapes {sorted({c.shape for c in channels})}", path)
        if len({c.shape for c in channels}) > 1:
            raise FomoInputError(f"channels differ in shape: {[c.shape for c in channels]}", path)
        names = self.task.channel_names
        for index in range(n_images):  # one scan stored as two sequences, as check_distinct_files refuses for files
            for other in range(index + 1, n_images):
                if np.array_equal(channels[index], channels[other]):
                    raise FomoInputError(f"channels {names[index]} and {names[other]} are identical: one scan given "
                                         "as two sequences; each channel needs its own scan", path)
        return channels

    def _spacing(self, path: Path) -> Tuple[float, ...]:
        if self.spacing is not None:
            return self.spacing
        pkl = path.with_suffix(PKL_SUFFIX)
        if not os.path.lexists(pkl):
            raise FomoInputError(f"no spacing: {pkl.name} is missing and no spacing was given ({SPACING_OPTION})", path)
        check_readable_file(pkl)
        try:
            with open(pkl, "rb") as f:
                properties = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError) as e:
            raise FomoInputError(f"cannot read the properties pickle ({e})", pkl) from None
        for key in NPY_SPACING_KEYS:
            if isinstance(properties, dict) and key in properties:
                return tuple(float(s) for s in properties[key])
        raise FomoInputError(f"holds no spacing (looked for {list(NPY_SPACING_KEYS)})", pkl)

    @staticmethod
    def _to_image(array: np.ndarray, spacing: Sequence[float]) -> sitk.Image:
        # numpy [X, Y, Z] -> SimpleITK, whose array view is [Z, Y, X]
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.astype(np.float32).transpose()))
        image.SetSpacing(spacing)
        image.SetDirection(RAS_DIRECTION)
        return image

    def read_images(self, case: FomoCase) -> Dict[str, sitk.Image]:
        path = next(iter(case.images.values()))
        channels, spacing = self._channels(path), self._spacing(path)
        return {name: self._to_image(a, spacing) for name, a in zip(self.task.channel_names, channels)}

    def read_mask(self, case: FomoCase) -> sitk.Image:
        path = next(iter(case.images.values()))
        channels = self._channels(path)
        if len(channels) > len(self.task.channels):
            return self._to_image(channels[-1], self._spacing(path))
        if case.label is None:
            raise FomoInputError(f"no mask: the array has no mask channel and {self.task.label_file} is missing "
                                 f"from {self.root.parent / LABELS_DIR}", path)
        mask = read_nifti(case.label)
        # The arrays carry no orientation; the mask takes theirs so that both lie on one grid.
        mask.SetOrigin((0.0,) * SPATIAL_DIMS)
        mask.SetDirection(RAS_DIRECTION)
        mask.SetSpacing(self._spacing(path))
        return mask


def detect_layout(root: Path, task: TaskSpec, spacing: Optional[Sequence[float]] = None) -> FomoLayout:
    """The layout of ``root``: a FOMO task folder (``preprocessed/``) or a folder of ``sub_*.npy`` arrays.

    ``spacing`` (the voxel size of .npy arrays) is refused with NIfTI input, whose files carry their own."""
    if not root.exists():
        raise FomoInputError("input folder does not exist", root)
    if not root.is_dir():
        raise FomoInputError("input is a file, not a folder: pass the FOMO task folder (with preprocessed/ and "
                             "labels/) or the folder of sub_<N>.npy arrays", root)
    has_nifti = (root / IMAGES_DIR).is_dir()
    has_npy = any(root.glob("sub_*" + NPY_SUFFIX))
    if has_nifti and has_npy:
        raise FomoInputError(f"holds both {IMAGES_DIR}/ and sub_*.npy arrays; pass the folder of one layout", root)
    if has_nifti:
        if spacing is not None:
            raise FomoInputError(f"{SPACING_OPTION} applies to .npy arrays only: NIfTI files carry their own voxel "
                                 f"size; leave {SPACING_OPTION} out", root)
        return NiftiLayout(root, task)
    if has_npy:
        return NpyLayout(root, task, spacing)
    raise FomoInputError(f"neither a FOMO task folder (with {IMAGES_DIR}/ and {LABELS_DIR}/) nor a folder of "
                         "sub_<N>.npy arrays", root)

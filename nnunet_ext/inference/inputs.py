"""The cases to predict, from an nnU-Net-style folder, a FOMO-layout folder or single files (the challenge container).

Every case yields the raw image array ``[C, z, y, x]`` in the model's channel order with the reader properties
nnU-Net's preprocessing and export need, so that all inputs go through the same nnU-Net preprocessing as training.
FOMO inputs are read exactly as ``fomo_convert`` read them (channels resampled onto the grid of the first one, a
zero image for a missing channel, reoriented to RAS), in memory: user data are never copied. Their properties
name the source image, so that :func:`restore_source_geometry` writes a mask back in the input's own shape and
orientation.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Protocol, Tuple

import numpy as np
import SimpleITK as sitk
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

from nnunet_ext.dataset_conversion.convert import case_images
from nnunet_ext.dataset_conversion.fomo_reader import (
    IMAGES_DIR,
    SUBJECT_PATTERN,
    FomoCase,
    NiftiLayout,
    numbered_dirs,
    orientation_of,
    to_ras,
)
from nnunet_ext.dataset_conversion.image_checks import (
    apply_nan_rule,
    check_intensities,
    is_nifti,
    load_checked_nifti,
    nonfinite_voxels_in_file,
    spatial_shape,
)
from nnunet_ext.dataset_conversion.tasks import FOMO_KEY, TaskSpec, get_task
from nnunet_ext.errors import FomoInputError

log = logging.getLogger(__name__)

#: Length of nnU-Net's channel suffix ``_XXXX`` in ``case_XXXX.nii.gz``.
CHANNEL_SUFFIX_LENGTH = 5
#: nnU-Net lists a folder's cases with a process pool; one worker is plenty for a file listing.
LISTING_PROCESSES = 1
#: Key of the reader properties naming the file whose geometry a FOMO case's mask must be written in.
SOURCE_IMAGE_KEY = "fomo_source_image"


class CaseSource(Protocol):
    """One case to predict."""

    case_id: str

    def read(self, reader: BaseReaderWriter) -> Tuple[np.ndarray, dict]:
        """The raw images ``[C, *spatial]`` (float32) and the reader's properties (geometry), as nnU-Net reads them."""


def model_channels(dataset_json: Mapping) -> Tuple[str, ...]:
    """The model's input channels in order (dataset.json ``channel_names``)."""
    names = dataset_json["channel_names"]
    return tuple(names[key] for key in sorted(names, key=int))


def task_of(dataset_json: Mapping, source: Path) -> TaskSpec:
    """The FOMO task a model was trained for (dataset.json ``fomo.task_id``)."""
    fomo = dataset_json.get(FOMO_KEY)
    if not isinstance(fomo, Mapping) or "task_id" not in fomo:
        raise FomoInputError(f"dataset.json has no '{FOMO_KEY}.task_id': train on data converted by fomo_convert",
                             source)
    return get_task(fomo["task_id"])


@dataclass(frozen=True)
class NnunetCase:
    """A case of an nnU-Net-style folder: ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ...

    Its files pass the checks every command applies (``image_checks``): geometry, one shape for all channels, the
    NaN/Inf rule; an all-zero channel is what ``fomo_convert`` writes for a missing modality, and is predicted so
    beside a channel that holds an image. A case whose every channel is all zero holds no image at all: it is
    refused with the check that refuses an all-zero file of the FOMO layout.
    """

    case_id: str
    files: Tuple[str, ...]
    nan_to_zero: bool = False

    def read(self, reader: BaseReaderWriter) -> Tuple[np.ndarray, dict]:
        paths = [Path(f) for f in self.files]
        niftis = {path: load_checked_nifti(path) for path in paths if is_nifti(path)}
        shapes = {path: spatial_shape(nifti.shape, path) for path, nifti in niftis.items()}
        if len(set(shapes.values())) > 1:
            listed = ", ".join(f"{path.name} {list(shape)}" for path, shape in shapes.items())
            raise FomoInputError(f"case {self.case_id}: its channels differ in shape ({listed})", paths[0].parent)
        try:
            images, properties = reader.read_images(self.files)
        except RuntimeError as e:  # nnU-Net's readers refuse inconsistent channels with a bare RuntimeError
            raise FomoInputError(f"case {self.case_id}: {e}", paths[0].parent) from None
        for path in paths:
            if path in niftis:  # the reader has already turned them into zeros, which are no longer visible
                apply_nan_rule(nonfinite_voxels_in_file(niftis[path]), path, self.nan_to_zero)
        # np.any counts NaN as non-zero: a NaN channel is judged by the NaN rule below, not taken for an image-less one
        holds_an_image = any(np.any(channel) for channel in images)
        for channel, path in zip(images, paths):
            check_intensities(channel, path, self.nan_to_zero, zero_means_missing=holds_an_image)
        return images, properties


@dataclass(frozen=True)
class FomoSessionCase:
    """A FOMO session (``sub_<N>/ses_<M>/<stem>.nii.gz`` or the container's files), read as ``fomo_convert`` does."""

    layout: NiftiLayout
    case: FomoCase
    channels: Tuple[str, ...]
    nan_to_zero: bool
    #: False for the container's single sessions: images that are not co-registered are resampled onto the first
    #: one with a warning instead of refused (see ``fomo_reader.onto_grid``).
    require_co_registered: bool = True

    @property
    def case_id(self) -> str:
        return self.case.case_id

    def read(self, reader: BaseReaderWriter) -> Tuple[np.ndarray, dict]:
        # The channels are aligned with SimpleITK; the geometry must come from the same library's view of the grid.
        if not isinstance(reader, SimpleITKIO):
            raise FomoInputError(f"the model's plans read images with {type(reader).__name__}; FOMO folders can only "
                                 "be predicted by models whose plans use SimpleITKIO (as fomo_plan_and_preprocess does)")
        images, _ = case_images(self.layout, self.case, self.nan_to_zero, self.require_co_registered)
        images = {channel: to_ras(image) for channel, image in images.items()}  # as fomo_convert stores them
        reference = next(iter(images))
        properties = _reader_properties(reader, images[reference])
        properties[SOURCE_IMAGE_KEY] = str(self.case.images[reference])
        shape = sitk.GetArrayViewFromImage(images[reference]).shape
        missing = [c for c in self.channels if c not in images]
        if missing:
            # what fomo_convert's default "zeros" strategy gave the model in training
            log.warning("%s: no %s image; predicting with a zero image in its place", self.case_id, "/".join(missing))
        arrays = [sitk.GetArrayFromImage(images[c]) if c in images else np.zeros(shape, np.float32)
                  for c in self.channels]
        return np.stack(arrays).astype(np.float32), properties


def _reader_properties(reader: BaseReaderWriter, image: sitk.Image) -> dict:
    """The properties ``reader`` gives an in-memory image: nnU-Net reads files, so the image goes through one,
    uncompressed NIfTI (the same header; gzip made this about half a second of every brain-sized case)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "reference.nii")
        sitk.WriteImage(image, path)
        return reader.read_images([path])[1]


def restore_source_geometry(mask_path: Path, properties: Mapping) -> None:
    """Rewrite a FOMO case's predicted mask (RAS, like the model's input) in the orientation of its source image.

    The reorientation only permutes and flips voxels, so the mask takes the source's exact shape and header.
    Cases of nnU-Net-style folders carry no source image and are left as nnU-Net wrote them.
    """
    source_path = properties.get(SOURCE_IMAGE_KEY)
    if source_path is None:
        return
    source = sitk.ImageFileReader()
    source.SetFileName(source_path)
    source.ReadImageInformation()
    mask = sitk.DICOMOrient(sitk.ReadImage(str(mask_path)), orientation_of(source))
    if mask.GetSize() != source.GetSize():
        raise RuntimeError(f"{mask_path}: reoriented mask has size {mask.GetSize()}, its source {source.GetSize()}")
    mask.SetOrigin(source.GetOrigin())
    mask.SetSpacing(source.GetSpacing())
    mask.SetDirection(source.GetDirection())
    tmp = mask_path.with_name(f".{mask_path.name}.tmp.nii.gz")
    sitk.WriteImage(mask, str(tmp), useCompression=True)
    os.replace(tmp, mask_path)


class UnlabelledNiftiLayout(NiftiLayout):
    """The FOMO NIfTI layout without a ``labels/`` tree: what is predicted has no label yet."""

    def discover(self) -> List[FomoCase]:
        subjects = numbered_dirs(self.root / IMAGES_DIR, SUBJECT_PATTERN)
        if not subjects:
            raise FomoInputError("no sub_<N> folders found", self.root / IMAGES_DIR)
        return [FomoCase(f"{subject}_{session}", subject, self._channel_files(folder), None)
                for subject, subject_dir in subjects.items()
                for session, folder in self.sessions(subject_dir).items()]


def _warn_unused_channels(case: FomoCase, channels: Tuple[str, ...]) -> None:
    """Say which of a session's images the model has no channel for."""
    unused = sorted(set(case.images) - set(channels))
    if unused:
        log.warning("%s: the model was trained without %s; ignoring those images", case.case_id, "/".join(unused))


def fomo_folder_cases(folder: Path, dataset_json: Mapping, nan_to_zero: bool) -> List[FomoSessionCase]:
    """The sessions of a FOMO task folder (``preprocessed/sub_<N>/[ses_<M>/]``), labels not needed."""
    layout = UnlabelledNiftiLayout(folder, task_of(dataset_json, folder))
    channels = model_channels(dataset_json)
    cases = layout.discover()
    for case in cases:
        _warn_unused_channels(case, channels)
    return [FomoSessionCase(layout, case, channels, nan_to_zero) for case in cases]


def session_from_files(case_id: str, files: Mapping[str, Path], dataset_json: Mapping,
                       nan_to_zero: bool = False) -> FomoSessionCase:
    """One session given as ``{file stem (dwi_b1000, t2s, ...): path}``, as the challenge container receives it.

    The container must answer for every subject: images not co-registered with the first one are resampled onto it
    (and logged), not refused as ``fomo_convert`` refuses them in training data."""
    task = task_of(dataset_json, next(iter(files.values())))
    images: Dict[str, Path] = {}
    for channel in task.channels:
        given = [stem for stem in channel.stems if stem in files]
        if len(given) > 1:
            raise FomoInputError(f"{' and '.join(given)} both given; channel {channel.name} takes one of them")
        if given:
            images[channel.name] = Path(files[given[0]])
    for path in images.values():
        if not path.is_file():
            raise FomoInputError("image file does not exist", path)
    if not images:
        raise FomoInputError(f"no task {task.task_id} image among {sorted(files)}")
    case = FomoCase(case_id, case_id, images, None)
    layout = UnlabelledNiftiLayout(next(iter(images.values())).parent, task)
    return FomoSessionCase(layout, case, model_channels(dataset_json), nan_to_zero, require_co_registered=False)


def nnunet_folder_cases(folder: Path, dataset_json: Mapping, nan_to_zero: bool = False) -> List[NnunetCase]:
    """The cases of an nnU-Net-style folder, each with exactly the files ``_0000`` .. ``_<C-1>`` of the model's C
    channels (nnU-Net itself would take any numbers in sorted order, e.g. ``_0004`` as the fourth channel)."""
    file_ending = dataset_json["file_ending"]
    lists = create_lists_from_splitted_dataset_folder(str(folder), file_ending, num_processes=LISTING_PROCESSES)
    channels = model_channels(dataset_json)
    expected = [f"_{index:04d}{file_ending}" for index in range(len(channels))]
    cases = []
    for files in lists:
        case_id = Path(files[0]).name[: -(len(file_ending) + CHANNEL_SUFFIX_LENGTH)]
        suffixes = [Path(f).name[len(case_id):] for f in files]
        if suffixes != expected:
            raise FomoInputError(f"case {case_id} has channel files {', '.join(case_id + x for x in suffixes)}; the "
                                 f"model's {len(channels)} channels ({', '.join(channels)}) need exactly "
                                 f"{', '.join(case_id + x for x in expected)}", folder)
        cases.append(NnunetCase(case_id, tuple(files), nan_to_zero))
    return cases


def discover_cases(folder: Path, dataset_json: Mapping, nan_to_zero: bool = False) -> List[CaseSource]:
    """The cases of ``folder``: a FOMO task folder (with ``preprocessed/``) or an nnU-Net-style image folder."""
    if not folder.is_dir():
        raise FomoInputError("input folder does not exist", folder)
    if (folder / IMAGES_DIR).is_dir():
        cases: List[CaseSource] = list(fomo_folder_cases(folder, dataset_json, nan_to_zero))
    else:
        cases = list(nnunet_folder_cases(folder, dataset_json, nan_to_zero))
    if not cases:
        raise FomoInputError(f"no cases found: expected <case>_0000{dataset_json['file_ending']} files or a FOMO "
                             f"task folder with {IMAGES_DIR}/sub_<N>/", folder)
    return cases

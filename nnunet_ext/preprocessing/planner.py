"""FOMO plans: nnU-Net's experiment planner with the pretraining's spacing, network and normalisation.

Only the ``3d_fullres`` configuration is written. Its spacing, intensity normalisation and network are those the
FOMO25 encoder was pretrained with; resampling, cropping, transposition and the data identifier stay nnU-Net's.

Spacing: 1 mm isotropic by default, the pretraining's; ``--spacing`` plans at another (e.g. 2 mm, for CPU budgets
and quick experiments), with a warning, since the encoder's filters were tuned to 1 mm.

Patch size: the default :data:`DEFAULT_PATCH_SIZE` (160 x 192 x 160 voxels at 1 mm) holds a whole skull-stripped
adult brain (about 140 x 175 x 145 mm once cropped to its bounding box), so the image-level heads pool over the
entire brain and segmentation sees the full context. nnU-Net's own VRAM estimator puts UNet-B at batch 2 on this
patch at about 12 GB (UNet-XL about 24 GB): it fits 24-80 GB GPUs, UNet-XL from 40 GB. Smaller datasets do not
pay for it: each axis is capped by the median image shape rounded up to a multiple of 16 (the network pools four
times by 2). At another spacing the default covers the same physical field (80 x 96 x 80 voxels at 2 mm), and
never less than :data:`MIN_PATCH_EDGE` per axis. ``--patch-size`` overrides it, up to
:data:`MAX_PATCH_TO_MEDIAN_RATIO` times the median shape.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

from nnunet_ext.dataset_conversion.tasks import FOMO_KEY, PRETRAINING
from nnunet_ext.errors import FomoInputError
from nnunet_ext.networks import DECODER_LAYOUTS, FOMO_N_STAGES, MODEL_PRESETS, SEGMENTATION, TASK_TYPES
from nnunet_ext.networks.heads import POOLINGS
from nnunet_ext.networks.resenc import RESENC_CLASS_NAME, RESENC_PRESETS, FomoResEncUNet, scaled_features
from nnunet_ext.networks.unet import (
    DECODER_TASK_TYPES,
    DEFAULT_HEAD_POOLING,
    FomoUNet,
    fomo_strides,
)
from nnunet_ext.preprocessing.fomo_plans import FOMO_PLANS_KEY, FomoPlansBlock, HeadSpec, PretrainedSpec
from nnunet_ext.preprocessing.normalization import FomoPretrainingNormalization
from nnunet_ext.pretrained import load_fomo_state_dict, sha256_of_file
from nnunet_ext.pretrained import resenc_layout
from nnunet_ext.pretrained.fomo_layout import detect_layout
from nnunet_ext.pretrained.key_mapping import CHANNEL_ADAPTATIONS, DEFAULT_CHANNEL_ADAPTATION, transfer_fomo_weights

log = logging.getLogger(__name__)

#: The only configuration FOMO plans hold.
FULLRES = "3d_fullres"
#: Voxel spacing of the pretraining data: the encoder's filters are tuned to this scale.
PRETRAINING_SPACING_MM: Tuple[float, float, float] = (1.0, 1.0, 1.0)


def patch_divisor(n_stages: int) -> int:
    """What patch edges must be divisible by: the network's total downsampling (``n_stages - 1`` max-pools by 2)."""
    return 2 ** (n_stages - 1)


def min_patch_edge(n_stages: int) -> int:
    """Smallest patch edge for training: more than one bottleneck voxel per axis, for instance norm."""
    return 2 * patch_divisor(n_stages)


#: :func:`patch_divisor` and :func:`min_patch_edge` of the FOMO network (four max-pools by 2).
PATCH_DIVISOR = patch_divisor(FOMO_N_STAGES)
MIN_PATCH_EDGE = min_patch_edge(FOMO_N_STAGES)
#: Largest ``--patch-size`` edge as a multiple of the median image edge (at the planned spacing). nnU-Net caps its
#: patch at the median shape; a somewhat larger one is legitimate (cases larger than the median, or a whole brain
#: for image-level heads), but beyond twice the median most of every patch is padding, which costs memory and time
#: and teaches nothing: typically a wrong axis order or a patch meant for another spacing.
MAX_PATCH_TO_MEDIAN_RATIO = 2.0
#: Default patch (voxels at 1 mm, nnU-Net's array axis order); see the module docstring.
DEFAULT_PATCH_SIZE: Tuple[int, int, int] = (160, 192, 160)
#: Default patch of a pretraining pool (voxels at 1 mm): the FOMO baseline's masked-image-modelling patch, 96^3.
PRETRAINING_PATCH_SIZE: Tuple[int, int, int] = (96, 96, 96)
#: Cases per training batch (the FOMO baseline's and nnU-Net's minimum).
BATCH_SIZE = 2
#: nnU-Net's number of augmentation workers (see :func:`positive_augmentation_workers`).
AUGMENTATION_WORKERS_ENV = "nnUNet_n_proc_DA"
#: Dotted path nnU-Net resolves with ``pydoc.locate`` to build the network from the plans.
NETWORK_CLASS_NAME = "nnunet_ext.networks.FomoUNet"
#: ``--model`` choices: the FOMO25 UNets, then the residual-encoder sizes of FOMO26 / nnssl.
MODEL_CHOICES = (*sorted(MODEL_PRESETS), *RESENC_PRESETS)

Shape = Union[Sequence[int], np.ndarray]


def patch_size_problem(patch_size: Sequence[int], n_stages: int = FOMO_N_STAGES) -> Optional[str]:
    """What is wrong with ``patch_size`` for training a network of ``n_stages`` levels, or None: it must be 3
    multiples of :func:`patch_divisor`, each at least :func:`min_patch_edge`."""
    divisor, minimum = patch_divisor(n_stages), min_patch_edge(n_stages)
    if len(patch_size) == 3 and all(edge >= minimum and edge % divisor == 0 for edge in patch_size):
        return None
    return (f"must be 3 multiples of {divisor} (the network downsamples {n_stages - 1} times by 2), each at least "
            f"{minimum} (training needs more than one bottleneck voxel per axis)")


def validate_patch_size(patch_size: Sequence[int], n_stages: int = FOMO_N_STAGES) -> Tuple[int, int, int]:
    """Return ``patch_size`` as a tuple, or refuse it for a network of ``n_stages`` (see :func:`patch_size_problem`)."""
    patch = tuple(int(edge) for edge in patch_size)
    problem = patch_size_problem(patch, n_stages)
    if problem is not None:
        raise FomoInputError(f"patch size {list(patch_size)} {problem}")
    return patch  # type: ignore[return-value]


def validate_spacing(spacing: Sequence[float]) -> Tuple[float, float, float]:
    """``spacing`` (one isotropic value or 3, in mm) as 3 floats; refuse non-positive or non-finite values."""
    values = tuple(float(s) for s in spacing)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise FomoInputError(f"spacing {list(spacing)} must be one or three positive, finite values in mm")
    return values  # type: ignore[return-value]


def _round_up(edge: float, n_stages: int = FOMO_N_STAGES) -> int:
    divisor = patch_divisor(n_stages)
    return divisor * math.ceil(edge / divisor - 1e-9)


def default_patch_size(median_shape: Shape, spacing: Sequence[float] = PRETRAINING_SPACING_MM,
                       field: Sequence[int] = DEFAULT_PATCH_SIZE, n_stages: int = FOMO_N_STAGES
                       ) -> Tuple[int, int, int]:
    """The ``field`` (voxels at 1 mm; :data:`DEFAULT_PATCH_SIZE`, or :data:`PRETRAINING_PATCH_SIZE` for a
    pretraining pool) in voxels of ``spacing``, each axis capped by the median image shape; rounded up to multiples
    of the divisor of a network of ``n_stages``, at least its :func:`min_patch_edge`."""
    return tuple(max(min_patch_edge(n_stages), min(_round_up(default * pretraining / s, n_stages),
                                                   _round_up(median, n_stages)))
                 for default, pretraining, s, median in zip(field, PRETRAINING_SPACING_MM, spacing,
                                                            median_shape))  # type: ignore[return-value]


def check_patch_fits_median(patch_size: Sequence[int], median_shape: Shape, n_stages: int = FOMO_N_STAGES) -> None:
    """Refuse an explicit patch with an edge over :data:`MAX_PATCH_TO_MEDIAN_RATIO` times the median image edge
    (rounded up to the divisor, and never below the :func:`min_patch_edge` of a network of ``n_stages``, which any
    dataset may use)."""
    limit = [max(min_patch_edge(n_stages), _round_up(MAX_PATCH_TO_MEDIAN_RATIO * median, n_stages))
             for median in median_shape]
    if any(edge > most for edge, most in zip(patch_size, limit)):
        median = [round(float(edge), 1) for edge in median_shape]
        raise FomoInputError(f"--patch-size {list(patch_size)} exceeds {MAX_PATCH_TO_MEDIAN_RATIO:g} x the median "
                             f"image shape {median} at the planned spacing (largest allowed {limit}): most of every "
                             "patch would be padding; check the axis order and the spacing")


@dataclass(frozen=True)
class FomoPlanSettings:
    """What the user chooses about FOMO plans (the ``fomo_plan_and_preprocess`` options)."""

    #: A FOMO25 UNet (:data:`MODEL_PRESETS`) or a residual-encoder U-Net of FOMO26 / nnssl (:data:`RESENC_PRESETS`).
    model: str = "unet_b"
    #: None: the model's width (32 for unet_b and the resenc sizes up to _b, 64 for unet_xl and the larger resenc
    #: sizes); small values keep tests fast (a resenc model scales every stage's features alike).
    starting_filters: Optional[int] = None
    decoder_layout: str = "unet_b_lw_dec"
    #: None: :func:`default_patch_size`.
    patch_size: Optional[Tuple[int, int, int]] = None
    #: Target spacing in mm (nnU-Net's array axis order); the pretraining's 1 mm by default.
    spacing: Tuple[float, float, float] = PRETRAINING_SPACING_MM
    pretrained: Optional[Path] = None
    head_dropout: float = 0.0
    #: None: the bottleneck (the deepest encoder level), the FOMO baselines' choice.
    head_pool_levels: Optional[Tuple[int, ...]] = None
    head_pooling: str = DEFAULT_HEAD_POOLING
    channel_adaptation: str = DEFAULT_CHANNEL_ADAPTATION
    #: Cases per optimiser step; under DDP nnU-Net splits it over the ranks (plan ranks x per-GPU batch).
    batch_size: int = BATCH_SIZE

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise FomoInputError(f"batch size must be at least 1, got {self.batch_size}")
        if self.model not in MODEL_CHOICES:
            raise FomoInputError(f"unknown model {self.model!r}; expected one of {MODEL_CHOICES}")
        if self.decoder_layout not in DECODER_LAYOUTS:
            raise FomoInputError(f"unknown decoder layout {self.decoder_layout!r}; "
                                 f"expected one of {sorted(DECODER_LAYOUTS)}")
        if self.starting_filters is not None and self.starting_filters < 1:
            raise FomoInputError(f"starting filters must be positive, got {self.starting_filters}")
        if self.patch_size is not None:
            validate_patch_size(self.patch_size, self.n_stages)
        validate_spacing(self.spacing)
        if not 0.0 <= self.head_dropout < 1.0:
            raise FomoInputError(f"head dropout must be in [0, 1), got {self.head_dropout}")
        if not self.pool_levels or any(not 0 <= level < self.n_stages for level in self.pool_levels):
            raise FomoInputError(f"head pool levels must be encoder levels 0..{self.n_stages - 1}, "
                                 f"got {list(self.pool_levels)}")
        if self.head_pooling not in POOLINGS:
            raise FomoInputError(f"head pooling must be one of {POOLINGS}, got {self.head_pooling!r}")
        if self.channel_adaptation not in CHANNEL_ADAPTATIONS:
            raise FomoInputError(f"channel adaptation must be one of {CHANNEL_ADAPTATIONS}, "
                                 f"got {self.channel_adaptation!r}")
        if self.pretrained is not None and not Path(self.pretrained).is_file():
            raise FomoInputError("pretrained checkpoint not found", self.pretrained)

    @property
    def is_resenc(self) -> bool:
        """Whether the model is a residual-encoder U-Net (``FomoResEncUNet``) rather than a FOMO25 UNet."""
        return self.model in RESENC_PRESETS

    @property
    def features(self) -> Tuple[int, ...]:
        """Features per stage of a resenc model (its preset's, scaled to ``starting_filters`` when given)."""
        features = RESENC_PRESETS[self.model][0]
        return features if self.starting_filters is None else scaled_features(features, self.starting_filters)

    @property
    def filters(self) -> int:
        if self.is_resenc:
            return self.features[0]
        return self.starting_filters if self.starting_filters is not None else MODEL_PRESETS[self.model]

    @property
    def n_stages(self) -> int:
        return len(self.features) if self.is_resenc else FOMO_N_STAGES

    @property
    def pool_levels(self) -> Tuple[int, ...]:
        """The head's pooled levels, the bottleneck by default."""
        return (self.n_stages - 1,) if self.head_pool_levels is None else tuple(self.head_pool_levels)

    @property
    def has_custom_head(self) -> bool:
        return (self.head_dropout != 0.0 or self.pool_levels != (self.n_stages - 1,)
                or self.head_pooling != DEFAULT_HEAD_POOLING)

    def network_class_name(self) -> str:
        """The dotted path nnU-Net builds the network from."""
        return RESENC_CLASS_NAME if self.is_resenc else NETWORK_CLASS_NAME

    def arch_kwargs(self, task_type: str) -> Dict[str, Any]:
        """The network's keyword arguments for ``task_type`` (besides nnU-Net's channels and outputs), JSON-ready."""
        arch_kwargs: Dict[str, Any] = {
            "decoder_convs": DECODER_LAYOUTS[self.decoder_layout],
            "task_type": task_type,
            "n_stages": self.n_stages,
            # nnU-Net derives the deep-supervision scales from these (ConfigurationManager.pool_op_kernel_sizes)
            "strides": fomo_strides(self.n_stages),
        }
        if self.is_resenc:
            arch_kwargs.update(features_per_stage=list(self.features),
                               blocks_per_stage=list(RESENC_PRESETS[self.model][1]))
        else:
            arch_kwargs["starting_filters"] = self.filters
        if task_type not in DECODER_TASK_TYPES:
            arch_kwargs.update(head_dropout=self.head_dropout, head_pool_levels=list(self.pool_levels),
                               head_pooling=self.head_pooling)
        return arch_kwargs

    def build_network(self, input_channels: int, num_outputs: int, task_type: str) -> Union[FomoUNet, FomoResEncUNet]:
        """The network the plans describe (what the trainers will build)."""
        network_class = FomoResEncUNet if self.is_resenc else FomoUNet
        return network_class(input_channels, num_outputs, **self.arch_kwargs(task_type))


def task_from_dataset_json(dataset_json: Dict[str, Any], path: Path) -> Tuple[str, int]:
    """(task type, number of network outputs) from dataset.json's ``fomo`` key; segmentation without it."""
    num_labels = len(dataset_json["labels"])
    fomo = dataset_json.get(FOMO_KEY)
    if fomo is None:
        log.warning("%s has no %r key: planning it as segmentation of its %d labels", path, FOMO_KEY, num_labels)
        return SEGMENTATION, num_labels
    task_type, num_classes = fomo.get("task_type"), fomo.get("num_classes")
    if task_type not in TASK_TYPES or not isinstance(num_classes, int) or num_classes < 1:
        raise FomoInputError(f"{FOMO_KEY}.task_type must be one of {TASK_TYPES} and {FOMO_KEY}.num_classes a "
                             f"positive integer, got {task_type!r} and {num_classes!r}", path)
    if task_type == SEGMENTATION and num_classes != num_labels:
        # nnU-Net sizes the segmentation output from the labels: both must agree
        raise FomoInputError(f"{FOMO_KEY}.num_classes is {num_classes} but 'labels' holds {num_labels}", path)
    return task_type, num_classes


def pretrained_spec(settings: FomoPlanSettings) -> Optional[PretrainedSpec]:
    """The checkpoint's absolute path and sha256 plus the network it must fit, or None without one.

    A FOMO checkpoint whose width or decoder layout differs from the planned network is refused now rather
    than when training starts; other checkpoints (e.g. nnU-Net's own) are left to the trainers' transfer report.
    """
    if settings.pretrained is None:
        return None
    path = Path(settings.pretrained).resolve()
    state_dict = load_fomo_state_dict(path)[0]
    if settings.is_resenc:
        _check_resenc_checkpoint(settings, state_dict, path)
        return PretrainedSpec(str(path), sha256_of_file(path), settings.model, settings.decoder_layout,
                              settings.filters)
    layout = detect_layout(state_dict)
    planned = (settings.filters, DECODER_LAYOUTS[settings.decoder_layout])
    if layout is not None and (layout.starting_filters, layout.decoder_convs) != planned:
        raise FomoInputError(f"the checkpoint has {layout.starting_filters} starting filters and "
                             f"{layout.decoder_convs} conv(s) per decoder block, the plans ask for {planned[0]} and "
                             f"{planned[1]}: choose --model / --starting-filters / --decoder-layout to match", path)
    return PretrainedSpec(str(path), sha256_of_file(path), settings.model, settings.decoder_layout, settings.filters)


def _check_resenc_checkpoint(settings: FomoPlanSettings, state_dict: Dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a residual-encoder checkpoint whose size differs from the planned model, naming both."""
    detected = resenc_layout.detect_layout(state_dict)
    if detected is None:
        if detect_layout(state_dict) is not None:
            raise FomoInputError(f"the checkpoint is a FOMO25 UNet, the plans ask for {settings.model}: choose --model "
                                 "unet_b / unet_xl", path)
        return  # e.g. nnU-Net's own checkpoints: left to the transfer report
    layout = detected[1]
    planned = (settings.features, RESENC_PRESETS[settings.model][1])
    if (layout.features, layout.blocks) != planned:
        raise FomoInputError(f"the checkpoint is {layout.model_name or 'an unpublished resenc size'} (features "
                             f"{list(layout.features)}, blocks {list(layout.blocks)}), the plans ask for "
                             f"{settings.model} (features {list(planned[0])}, blocks {list(planned[1])}): choose "
                             "--model / --starting-filters to match", path)


def check_checkpoint_fits(settings: FomoPlanSettings, dataset_json: Dict[str, Any], path: Path) -> None:
    """Refuse, before any preprocessing, a checkpoint the planned network cannot start from.

    The transfer the trainers will make is tried here on the planned network (its channels, task, width and
    decoder layout), and every weight must be finite: otherwise training would fail minutes later, inside nnU-Net's
    worker processes.
    """
    if settings.pretrained is None:
        return
    state_dict = load_fomo_state_dict(settings.pretrained)[0]
    nonfinite = [key for key, tensor in state_dict.items()
                 if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if nonfinite:
        raise FomoInputError(f"{len(nonfinite)} tensor(s) hold NaN/Inf weights, e.g. {nonfinite[:3]}",
                             settings.pretrained)
    task_type, num_outputs = task_from_dataset_json(dataset_json, path)
    network = settings.build_network(len(dataset_json["channel_names"]), num_outputs, task_type)
    transfer_fomo_weights(network, state_dict, settings.channel_adaptation, checkpoint=settings.pretrained)


@contextlib.contextmanager
def positive_augmentation_workers() -> Iterator[None]:
    """Plan with ``nnUNet_n_proc_DA`` of at least 1.

    CPU users set ``nnUNet_n_proc_DA=0`` (augmentation in the training process); nnU-Net's planner passes that value
    to ``torch.set_num_threads`` for its memory estimate, which then fails. Planning runs no augmentation, so the
    value only needs to be a valid thread count while it runs.
    """
    saved = os.environ.get(AUGMENTATION_WORKERS_ENV)
    if saved is not None and get_allowed_n_proc_DA() < 1:
        os.environ[AUGMENTATION_WORKERS_ENV] = "1"
    try:
        yield
    finally:
        if saved is not None:
            os.environ[AUGMENTATION_WORKERS_ENV] = saved


class FomoPlanner(ExperimentPlanner):
    """nnU-Net's planner writing FOMO plans: 1 mm spacing, FomoUNet, our normalisation, 3d_fullres only.

    Construct it with ``settings=FomoPlanSettings(...)``; the other arguments are nnU-Net's.
    """

    def __init__(self, dataset_name_or_id: Union[str, int], *args: Any,
                 settings: FomoPlanSettings = FomoPlanSettings(), **kwargs: Any):
        super().__init__(dataset_name_or_id, *args, **kwargs)
        # a 3d_lowres configuration is never searched for: FOMO plans hold 3d_fullres only
        self.lowres_creation_threshold = 0
        # the axes stay in the order nnU-Net reads them, so that --spacing and --patch-size mean the same axes
        self.suppress_transpose = True
        self.settings = settings
        self.fomo_block = self._fomo_block()

    def _fomo_block(self) -> FomoPlansBlock:
        dataset_json_path = Path(self.raw_dataset_folder) / "dataset.json"
        task_type, num_outputs = task_from_dataset_json(self.dataset_json, dataset_json_path)
        if task_type in DECODER_TASK_TYPES and self.settings.has_custom_head:
            raise FomoInputError("head dropout, pool levels and pooling apply to classification and regression only")
        head = HeadSpec(self.settings.head_dropout, self.settings.pool_levels, self.settings.head_pooling)
        return FomoPlansBlock(task_type, num_outputs, head, pretrained_spec(self.settings),
                              FomoPretrainingNormalization.__name__, self.settings.channel_adaptation)

    def plan_experiment(self) -> dict:
        with positive_augmentation_workers():
            return super().plan_experiment()

    def determine_fullres_target_spacing(self) -> np.ndarray:
        return np.array(self.settings.spacing, dtype=float)

    def determine_normalization_scheme_and_whether_mask_is_used_for_norm(self) -> Tuple[List[str], List[bool]]:
        # our scheme finds its own foreground (brighter than the minimum), so nnU-Net's non-zero mask stays off
        num_channels = len(self.dataset_json["channel_names"])
        return [FomoPretrainingNormalization.__name__] * num_channels, [False] * num_channels

    def get_plans_for_configuration(self, spacing: Shape, median_shape: Shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        """nnU-Net's configuration, with the FOMO network, patch, batch size and ``fomo`` block for 3D."""
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        if len(spacing) != 3:
            return plan  # the 2d configuration nnU-Net always plans: save_plans drops it
        n_stages = self.settings.n_stages
        if self.settings.patch_size is not None:
            check_patch_fits_median(self.settings.patch_size, median_shape, n_stages)
        field = PRETRAINING_PATCH_SIZE if self.fomo_block.task_type == PRETRAINING else DEFAULT_PATCH_SIZE
        patch = self.settings.patch_size or default_patch_size(median_shape, spacing, field, n_stages)
        plan.update({
            "batch_size": self.settings.batch_size,
            "patch_size": list(patch),
            "architecture": self._architecture(),
            FOMO_PLANS_KEY: self.fomo_block.to_json(),
        })
        return plan

    def _architecture(self) -> Dict[str, Any]:
        """The planned network by dotted path, with keyword arguments that need no imports."""
        return {"network_class_name": self.settings.network_class_name(),
                "arch_kwargs": self.settings.arch_kwargs(self.fomo_block.task_type), "_kw_requires_import": []}

    def save_plans(self, plans: dict) -> None:
        """Drop the 2d configuration nnU-Net always plans, then save with nnU-Net's merge (which keeps any other
        configuration an existing plans file of the same name holds, as nnU-Net always does)."""
        if FULLRES not in plans["configurations"]:
            raise FomoInputError("FOMO plans need 3D images; this dataset's median shape has a single slice",
                                 self.raw_dataset_folder)
        plans["configurations"] = {FULLRES: plans["configurations"][FULLRES]}
        super().save_plans(plans)

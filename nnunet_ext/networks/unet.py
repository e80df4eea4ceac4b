"""UNet-B / UNet-XL of the FOMO25 foundation model, built from dynamic-network-architectures' blocks.

The encoder and decoder reproduce the pretrained architecture exactly (fomo_reference.md, section 1), so the
checkpoint's weights can be transferred tensor by tensor (``nnunet_ext.pretrained``). The class is usable as an
nnU-Net architecture: plans name it by dotted path (``nnunet_ext.networks.FomoUNet``) and nnU-Net passes
``input_channels``, ``num_classes`` and ``deep_supervision`` next to the plans' ``arch_kwargs``.
"""

from __future__ import annotations

from collections.abc import Sequence

from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION, PRETRAINING, REGRESSION, SEGMENTATION
from nnunet_ext.networks.blocks import CONV_KERNEL_SIZE, LEAKY_RELU_SLOPE, LEVEL_SCALE, POOLING, fomo_layer_kwargs
from nnunet_ext.networks.task_network import (
    DECODER_TASK_TYPES,
    DEFAULT_HEAD_POOLING,
    RECONSTRUCTION_CHANNELS,
    TASK_TYPES,
    EncoderWithTop,
    require,
    validate_task_options,
)

__all__ = ["CLASSIFICATION", "PRETRAINING", "REGRESSION", "SEGMENTATION", "TASK_TYPES", "DECODER_TASK_TYPES",
           "RECONSTRUCTION_CHANNELS", "DEFAULT_HEAD_POOLING", "FomoUNet"]

#: Starting filters of the published models; every level doubles them.
MODEL_PRESETS: dict[str, int] = {"unet_b": 32, "unet_xl": 64}
#: Decoder convs per block of the two pretrained decoder layouts (the name is FOMO's ``model_name``).
DECODER_LAYOUTS: dict[str, int] = {"unet_b_lw_dec": 1, "unet_b": 2}
#: Levels of the pretrained encoder (f, 2f, 4f, 8f, 16f channels).
FOMO_N_STAGES = 5
#: Conv layers per encoder block in the pretrained network.
ENCODER_CONVS = 2

#: The network is 3D.
SPATIAL_DIMS = 3
#: Encoder level(s) pooled by the image-level head by default: the bottleneck of the 5-level network.
DEFAULT_HEAD_POOL_LEVELS: tuple[int, ...] = (FOMO_N_STAGES - 1,)

#: nnU-Net's He initialisation, with the slope of the network's LeakyReLU.
_HE_INIT = InitWeights_He(neg_slope=LEAKY_RELU_SLOPE)


def encoder_block_path(level: int) -> str:
    """Module path of encoder level ``level``'s conv block; DNA puts the max-pool first in levels >= 1."""
    return f"encoder.stages.{level}.{0 if level == 0 else 1}"


def decoder_block_path(stage: int) -> str:
    """Module path of decoder block ``stage`` (0 = deepest, i.e. FOMO's ``decoder_conv1``)."""
    return f"decoder.stages.{stage}"


def upsample_path(stage: int) -> str:
    """Module path of the transposed conv feeding decoder block ``stage`` (FOMO's ``upsample<stage + 1>``)."""
    return f"decoder.transpconvs.{stage}"


def conv_layer_path(block_path: str, conv_index: int) -> str:
    """Module path of conv layer ``conv_index`` (0-based) inside a block; it holds ``.conv`` and ``.norm``."""
    return f"{block_path}.convs.{conv_index}"


def output_conv_path(n_stages: int) -> str:
    """Module path of the full-resolution output conv; the other ``seg_layers`` are deep-supervision heads."""
    return f"decoder.seg_layers.{n_stages - 2}"


def fomo_strides(n_stages: int) -> list[list[int]]:
    """Pooling per level as nnU-Net plans record it (``arch_kwargs["strides"]``): none, then 2 on every axis."""
    return [[1] * SPATIAL_DIMS] + [[LEVEL_SCALE] * SPATIAL_DIMS for _ in range(n_stages - 1)]


def _require(condition: bool, message: str) -> None:
    """Refuse an invalid architecture argument (they come from plans files, i.e. user input)."""
    require(condition, "FomoUNet", message)


class FomoUNet(EncoderWithTop):
    """The FOMO25 UNet: ``n_stages`` levels (5 as pretrained: f, 2f, 4f, 8f, 16f channels), then a decoder or a head.

    ``task_type`` "segmentation" builds encoder + decoder and returns logits [B, num_classes, X, Y, Z] (a list
    [full, 1/2, 1/4, ...] with ``deep_supervision``); "pretraining" builds the same with one output channel, the
    reconstruction, and no deep-supervision heads at all (the pretrained files have none, and DDP needs every
    parameter to get a gradient); "classification" / "regression" build encoder + ``head`` (no decoder) and
    return [B, num_classes]. ``decoder_convs`` picks the decoder layout (1 = ``unet_b_lw_dec``,
    2 = ``unet_b``) and only shapes the decoder; the ``head_*`` options only apply to image-level tasks.
    ``strides`` is accepted only as nnU-Net's record of the fixed pooling (see :func:`fomo_strides`).
    Input sizes must be divisible by 2 ** (n_stages - 1) (16 for 5 stages), and twice that for training, where
    instance norm needs more than one bottleneck voxel.
    """

    def __init__(self, input_channels: int, num_classes: int, starting_filters: int = MODEL_PRESETS["unet_b"],
                 decoder_convs: int = DECODER_LAYOUTS["unet_b_lw_dec"], task_type: str = SEGMENTATION,
                 deep_supervision: bool = False, head_dropout: float = 0.0,
                 head_pool_levels: Sequence[int] = DEFAULT_HEAD_POOL_LEVELS, n_stages: int = FOMO_N_STAGES,
                 strides: Sequence[Sequence[int]] | None = None, head_pooling: str = DEFAULT_HEAD_POOLING):
        super().__init__()
        head_pool_levels = tuple(head_pool_levels)  # plans store JSON lists
        self._validate(input_channels, num_classes, starting_filters, decoder_convs, task_type,
                       deep_supervision, head_dropout, head_pool_levels, n_stages, head_pooling)
        # nnU-Net reads the pooling from arch_kwargs["strides"] (deep-supervision scales), so plans carry it;
        # FOMO's pooling is fixed, so anything else would be silently wrong.
        _require(strides is None or [list(s) for s in strides] == fomo_strides(n_stages),
                 f"strides must be {fomo_strides(n_stages)} (FOMO's max-pooling), got {strides!r}")
        self.input_channels = input_channels
        self.num_classes = num_classes
        self.starting_filters = starting_filters
        self.decoder_convs = decoder_convs
        self.task_type = task_type
        self.n_stages = n_stages
        features = [starting_filters * LEVEL_SCALE ** level for level in range(n_stages)]
        layer_kwargs = fomo_layer_kwargs()
        self.encoder = PlainConvEncoder(
            input_channels, n_stages, features, kernel_sizes=CONV_KERNEL_SIZE,
            strides=fomo_strides(n_stages), n_conv_per_stage=ENCODER_CONVS,
            return_skips=True, pool=POOLING, **layer_kwargs)
        self._attach_top(num_classes, decoder_convs, deep_supervision, features, head_pool_levels, head_dropout,
                         head_pooling)

    @staticmethod
    def _validate(input_channels: int, num_classes: int, starting_filters: int, decoder_convs: int,
                  task_type: str, deep_supervision: bool, head_dropout: float,
                  head_pool_levels: tuple[int, ...], n_stages: int, head_pooling: str) -> None:
        """Refuse arguments that are invalid or that would be silently ignored."""
        for name, value in (("input_channels", input_channels), ("starting_filters", starting_filters),
                            ("decoder_convs", decoder_convs)):
            _require(isinstance(value, int) and value >= 1, f"{name} must be a positive integer, got {value!r}")
        _require(isinstance(n_stages, int) and n_stages >= 2, f"n_stages must be an integer >= 2, got {n_stages!r}")
        validate_task_options("FomoUNet", num_classes, task_type, deep_supervision, head_dropout, head_pool_levels,
                              DEFAULT_HEAD_POOL_LEVELS, n_stages, head_pooling)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """He-initialise one conv layer (nnU-Net calls ``network.apply(network.initialize)`` after building).

        It runs before any pretrained transfer, so it never overwrites transferred weights.
        """
        _HE_INIT(module)

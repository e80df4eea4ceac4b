"""The residual-encoder U-Net of FOMO26 (``resenc_unet_b``) and nnssl (ResEnc-L), as dynamic-network-architectures
builds it for nnU-Net.

FOMO26's pretrained encoder is gardening-tools' ``ResidualEncoderUNet`` and nnssl's is DNA's ``ResidualEncoderUNet``;
both are the same network (fomo_reference.md, section 7): a one-conv stem, then per stage a stack of ResNet-D basic
blocks (conv-norm-act, conv-norm, add the skip, act; the first block of a stage strides by 2 and its skip
average-pools then projects with a 1x1 conv), transposed-conv upsampling, [upsampled, skip] concatenation and
``decoder_convs`` conv layers per decoder stage. Every conv has a bias (except the 1x1 skip projections), instance
norm is affine with eps 1e-5, the activation LeakyReLU(0.01). The module names are DNA's ``ResidualEncoderUNet``'s
(``encoder.stem``, ``encoder.stages``, ``decoder.transpconvs``, ``decoder.stages``, ``decoder.seg_layers``), so an nnssl
checkpoint maps name for name; ``nnunet_ext.pretrained.resenc_layout`` maps FOMO26's names.
"""

from __future__ import annotations

from collections.abc import Sequence

from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder

from nnunet_ext.dataset_conversion.tasks import SEGMENTATION
from nnunet_ext.networks.blocks import CONV_KERNEL_SIZE, fomo_layer_kwargs
from nnunet_ext.networks.task_network import DEFAULT_HEAD_POOLING, EncoderWithTop, require, validate_task_options
from nnunet_ext.networks.unet import fomo_strides

#: Residual blocks per stage and features per stage of the published sizes, by FOMO26's model name (asparagus'
#: ``resenc_unet.py``; the reference gives ``resenc_unet_b``, which is also nnssl's ResEnc-L).
RESENC_PRESETS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "resenc_unet_s": ((32, 64, 128, 256, 320, 320), (2, 2, 2, 2, 2, 2)),
    "resenc_unet_b": ((32, 64, 128, 256, 320, 320), (1, 3, 4, 6, 6, 6)),
    "resenc_unet_l": ((64, 128, 256, 512, 620, 620), (1, 3, 4, 6, 6, 6)),
    "resenc_unet_h": ((64, 128, 256, 512, 768, 768), (1, 3, 4, 6, 8, 8)),
    "resenc_unet_g": ((64, 128, 256, 512, 1024, 1024), (1, 3, 4, 6, 8, 8)),
}
#: Conv layers per decoder stage of every published size.
RESENC_DECODER_CONVS = 1
#: nnssl's name of the network that FOMO26 calls ``resenc_unet_b``.
NNSSL_RESENC_L = "ResEncL"
#: Dotted path nnU-Net resolves (``pydoc.locate``) to build the network from the plans.
RESENC_CLASS_NAME = "nnunet_ext.networks.FomoResEncUNet"

_OWNER = "FomoResEncUNet"


def scaled_features(features: Sequence[int], starting_filters: int) -> tuple[int, ...]:
    """``features`` scaled so that the first stage has ``starting_filters`` (small widths keep tests fast)."""
    return tuple(max(1, round(f * starting_filters / features[0])) for f in features)


def preset_name(features: Sequence[int], blocks: Sequence[int]) -> str | None:
    """FOMO26's model name of a published size, or None."""
    return next((name for name, (f, b) in RESENC_PRESETS.items()
                 if tuple(f) == tuple(features) and tuple(b) == tuple(blocks)), None)


class FomoResEncUNet(EncoderWithTop):
    """DNA's ``ResidualEncoder`` (``len(features_per_stage)`` stages), then a ``UNetDecoder`` or a pooling head.

    ``task_type`` "segmentation" / "pretraining" builds DNA's ``ResidualEncoderUNet`` exactly (same modules, names and
    forward pass); "classification" / "regression" keep the encoder and pool it (``head_*``; by default the average
    of the deepest stage, as FOMO26's own head). ``n_stages`` and ``strides`` are accepted only as nnU-Net's record of
    the fixed downsampling (2 per stage after the first). Input sizes must be divisible by 2 ** (n_stages - 1).
    """

    def __init__(self, input_channels: int, num_classes: int, features_per_stage: Sequence[int],
                 blocks_per_stage: Sequence[int], decoder_convs: int = RESENC_DECODER_CONVS,
                 task_type: str = SEGMENTATION, deep_supervision: bool = False, head_dropout: float = 0.0,
                 head_pool_levels: Sequence[int] | None = None, head_pooling: str = DEFAULT_HEAD_POOLING,
                 n_stages: int | None = None, strides: Sequence[Sequence[int]] | None = None):
        super().__init__()
        features, blocks = tuple(features_per_stage), tuple(blocks_per_stage)  # plans store JSON lists
        stages = len(features)
        for name, values in (("features_per_stage", features), ("blocks_per_stage", blocks)):
            require(len(values) >= 2 and all(isinstance(v, int) and v >= 1 for v in values), _OWNER,
                    f"{name} must hold at least 2 positive integers, got {list(values)!r}")
        require(len(blocks) == stages, _OWNER, f"blocks_per_stage needs one entry per stage ({stages}), "
                                               f"got {list(blocks)!r}")
        require(isinstance(input_channels, int) and input_channels >= 1, _OWNER,
                f"input_channels must be a positive integer, got {input_channels!r}")
        require(isinstance(decoder_convs, int) and decoder_convs >= 1, _OWNER,
                f"decoder_convs must be a positive integer, got {decoder_convs!r}")
        require(n_stages is None or n_stages == stages, _OWNER,
                f"n_stages is {n_stages!r} but features_per_stage has {stages} stages")
        require(strides is None or [list(s) for s in strides] == fomo_strides(stages), _OWNER,
                f"strides must be {fomo_strides(stages)} (stride 2 after the first stage), got {strides!r}")
        bottleneck = (stages - 1,)
        head_pool_levels = bottleneck if head_pool_levels is None else tuple(head_pool_levels)
        validate_task_options(_OWNER, num_classes, task_type, deep_supervision, head_dropout, head_pool_levels,
                              bottleneck, stages, head_pooling)
        self.input_channels = input_channels
        self.num_classes = num_classes
        self.features_per_stage = features
        self.blocks_per_stage = blocks
        self.decoder_convs = decoder_convs
        self.task_type = task_type
        self.n_stages = stages
        self.encoder = ResidualEncoder(
            input_channels, stages, list(features), kernel_sizes=CONV_KERNEL_SIZE, strides=fomo_strides(stages),
            n_blocks_per_stage=list(blocks), block=BasicBlockD, return_skips=True, stem_channels=features[0],
            **fomo_layer_kwargs())
        self._attach_top(num_classes, decoder_convs, deep_supervision, features, head_pool_levels, head_dropout,
                         head_pooling)

    #: nnU-Net's initialisation of its ResidualEncoderUNet (He, and zero for the last norm before each addition);
    #: nnU-Net applies it after building, before any pretrained transfer.
    initialize = staticmethod(ResidualEncoderUNet.initialize)

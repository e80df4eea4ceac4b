"""The key names and tensor shapes of FOMO25's pretrained UNet checkpoints (fomo_reference.md, section 1).

This module is the single written-down copy of that spec: the transfer table, the layout detection of
``fomo_inspect_checkpoint`` and the test checkpoints of ``testing.py`` all read it. Keys here carry no
``model.`` prefix (the loader strips it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from nnunet_ext.networks.unet import DECODER_LAYOUTS, ENCODER_CONVS, FOMO_N_STAGES, MODEL_PRESETS

#: Tensors of one FOMO conv layer (Conv3d with bias, then an affine InstanceNorm3d).
CONV_LAYER_TENSORS = ("conv.weight", "conv.bias", "norm.weight", "norm.bias")
#: Tensors of a transposed conv or of the output conv.
WEIGHT_AND_BIAS = ("weight", "bias")
#: FOMO's 1x1x1 output conv (one MAE reconstruction channel in the pretrained file).
OUTPUT_CONV = "decoder.out_conv"
#: Kernel sizes of FOMO's conv layers, transposed convs and output conv.
CONV_KERNEL = (3, 3, 3)
UPSAMPLE_KERNEL = (2, 2, 2)
OUTPUT_KERNEL = (1, 1, 1)
#: Input and output channels of the pretraining (single-channel MAE reconstruction).
PRETRAINING_CHANNELS = 1
#: The stem conv: its input-channel axis is what channel adaptation changes.
STEM_WEIGHT = "encoder.in_conv.conv1.conv.weight"
#: Present only in the ``unet_b`` decoder layout (two convs per decoder block).
SECOND_DECODER_CONV = "decoder.decoder_conv1.conv2.conv.weight"
UNKNOWN = "unknown"


def encoder_block(level: int) -> str:
    """FOMO name of encoder level ``level``: ``in_conv`` for level 0, then ``encoder_conv1..4``."""
    return "encoder.in_conv" if level == 0 else f"encoder.encoder_conv{level}"


def decoder_block(stage: int) -> str:
    """FOMO name of decoder block ``stage`` (0 = deepest): ``decoder_conv1..4``."""
    return f"decoder.decoder_conv{stage + 1}"


def upsample(stage: int) -> str:
    """FOMO name of the transposed conv feeding decoder block ``stage``: ``upsample1..4``."""
    return f"decoder.upsample{stage + 1}"


def conv_layer(block: str, conv_index: int) -> str:
    """FOMO name of conv layer ``conv_index`` (0-based) in a block: ``conv1``, ``conv2``."""
    return f"{block}.conv{conv_index + 1}"


def architecture_name(starting_filters: int) -> str:
    """``unet_b`` / ``unet_xl`` for the published widths, ``unknown`` otherwise."""
    return next((name for name, filters in MODEL_PRESETS.items() if filters == starting_filters), UNKNOWN)


def decoder_layout_name(decoder_convs: int) -> str:
    """``unet_b_lw_dec`` (1 conv per decoder block) / ``unet_b`` (2), ``unknown`` otherwise."""
    return next((name for name, convs in DECODER_LAYOUTS.items() if convs == decoder_convs), UNKNOWN)


@dataclass(frozen=True)
class FomoLayout:
    """One concrete FOMO UNet: width, decoder layout and channel counts (5 levels, as pretrained)."""

    starting_filters: int
    decoder_convs: int
    input_channels: int = PRETRAINING_CHANNELS
    output_channels: int = PRETRAINING_CHANNELS

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every key of this layout's state dict with its shape, encoder first."""
        features = [self.starting_filters * 2 ** level for level in range(FOMO_N_STAGES)]
        shapes: dict[str, tuple[int, ...]] = {}
        in_channels = self.input_channels
        for level, out_channels in enumerate(features):
            _add_block(shapes, encoder_block(level), in_channels, out_channels, ENCODER_CONVS)
            in_channels = out_channels
        for stage in range(FOMO_N_STAGES - 1):
            below, skip = features[-stage - 1], features[-stage - 2]
            shapes[f"{upsample(stage)}.weight"] = (below, skip, *UPSAMPLE_KERNEL)
            shapes[f"{upsample(stage)}.bias"] = (skip,)
            # The block sees [upsampled, skip] concatenated: twice the skip's channels.
            _add_block(shapes, decoder_block(stage), 2 * skip, skip, self.decoder_convs)
        shapes[f"{OUTPUT_CONV}.weight"] = (self.output_channels, features[0], *OUTPUT_KERNEL)
        shapes[f"{OUTPUT_CONV}.bias"] = (self.output_channels,)
        return shapes


def _add_block(shapes: dict[str, tuple[int, ...]], block: str, in_channels: int, out_channels: int,
               n_convs: int) -> None:
    """Add the shapes of a block of ``n_convs`` conv layers (the first maps in -> out, the others out -> out)."""
    for conv_index in range(n_convs):
        layer = conv_layer(block, conv_index)
        layer_in = in_channels if conv_index == 0 else out_channels
        shapes[f"{layer}.conv.weight"] = (out_channels, layer_in, *CONV_KERNEL)
        for tensor in CONV_LAYER_TENSORS[1:]:
            shapes[f"{layer}.{tensor}"] = (out_channels,)


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> FomoLayout | None:
    """Read width, decoder layout and channels off a FOMO-named state dict; None if it has no FOMO stem.

    Detection only names the candidate layout: whether the state dict really matches it is decided by
    comparing against :meth:`FomoLayout.expected_shapes`.
    """
    stem = state_dict.get(STEM_WEIGHT)
    if stem is None or stem.ndim != len(CONV_KERNEL) + 2:
        return None
    out_conv = state_dict.get(f"{OUTPUT_CONV}.weight")
    return FomoLayout(
        starting_filters=stem.shape[0],
        decoder_convs=DECODER_LAYOUTS["unet_b"] if SECOND_DECODER_CONV in state_dict
        else DECODER_LAYOUTS["unet_b_lw_dec"],
        input_channels=stem.shape[1],
        output_channels=PRETRAINING_CHANNELS if out_conv is None else out_conv.shape[0],
    )


def layout_mismatches(state_dict: Mapping[str, torch.Tensor], layout: FomoLayout) -> dict[str, list[str]]:
    """Keys of ``state_dict`` that differ from ``layout``: ``missing``, ``unexpected`` and ``wrong_shape``."""
    expected = layout.expected_shapes()
    return {
        "missing": [key for key in expected if key not in state_dict],
        "unexpected": [key for key in state_dict if key not in expected],
        "wrong_shape": [key for key, shape in expected.items()
                        if key in state_dict and tuple(state_dict[key].shape) != shape],
    }

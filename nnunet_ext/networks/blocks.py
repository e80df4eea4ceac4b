"""The layer choices of the FOMO25 UNet, expressed as keyword arguments for dynamic-network-architectures.

Every conv layer of the pretrained network is Conv3d(k3, stride 1, padding 1, bias) -> InstanceNorm3d(eps 1e-5,
affine, no running statistics) -> LeakyReLU(0.01); levels are joined by MaxPool3d(2) on the way down and
ConvTranspose3d(k2, s2, bias) on the way up (fomo_reference.md, section 1).
"""

from __future__ import annotations

from typing import Any

from torch import nn

#: Side length of every 3D conv kernel in the encoder and decoder blocks.
CONV_KERNEL_SIZE = 3
#: Downsampling factor between two levels (max pooling) and upsampling factor (transposed conv).
LEVEL_SCALE = 2
#: FOMO's InstanceNorm3d epsilon (PyTorch's default, stated explicitly because the weights depend on it).
NORM_EPS = 1e-5
#: Negative slope of FOMO's LeakyReLU.
LEAKY_RELU_SLOPE = 0.01
#: Downsampling by max pooling (DNA's PlainConvEncoder ``pool`` option), not by strided convolutions.
POOLING = "max"


def fomo_layer_kwargs() -> dict[str, Any]:
    """Keyword arguments for DNA's ``PlainConvEncoder`` / ``UNetDecoder`` that reproduce FOMO's conv layers.

    A fresh dict each call: DNA keeps references to the kwargs dicts, so sharing one would couple networks.
    """
    return {
        "conv_op": nn.Conv3d,
        "conv_bias": True,
        "norm_op": nn.InstanceNorm3d,
        # track_running_stats stays False (the default): FOMO's checkpoint has no running-statistics buffers.
        "norm_op_kwargs": {"eps": NORM_EPS, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": nn.LeakyReLU,
        "nonlin_kwargs": {"negative_slope": LEAKY_RELU_SLOPE, "inplace": True},
    }

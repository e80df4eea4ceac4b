"""What every FOMO network shares: an encoder, then a decoder or an image-level head chosen by the task type.

``FomoUNet`` (FOMO25's UNet-B / XL) and ``FomoResEncUNet`` (FOMO26's / nnssl's residual-encoder U-Net) differ only in
their encoder; the decoder (dynamic-network-architectures' ``UNetDecoder``), the pooling head, the argument checks
and the forward pass are the same, and live here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from torch import nn

from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION, PRETRAINING, REGRESSION, SEGMENTATION
from nnunet_ext.errors import FomoInputError
from nnunet_ext.networks.heads import POOLINGS, PoolingHead

TASK_TYPES = (SEGMENTATION, CLASSIFICATION, REGRESSION, PRETRAINING)
#: Task types whose network has the decoder (the others end in an image-level head).
DECODER_TASK_TYPES = (SEGMENTATION, PRETRAINING)
#: Output channels of the pretraining network: the reconstruction of its one input channel.
RECONSTRUCTION_CHANNELS = 1
#: The head's global pooling by default: the FOMO baselines' average (see heads.PoolingHead for the others).
DEFAULT_HEAD_POOLING = "avg"


def require(condition: bool, owner: str, message: str) -> None:
    """Refuse an invalid architecture argument of network ``owner`` (they come from plans files, i.e. user input)."""
    if not condition:
        raise FomoInputError(f"{owner}: {message}")


def validate_task_options(owner: str, num_classes: int, task_type: str, deep_supervision: bool, head_dropout: float,
                          head_pool_levels: tuple[int, ...], default_pool_levels: tuple[int, ...], n_stages: int,
                          head_pooling: str) -> None:
    """Refuse task and head arguments that are invalid or that would be silently ignored."""
    require(isinstance(num_classes, int) and num_classes >= 1, owner,
            f"num_classes must be a positive integer, got {num_classes!r}")
    require(task_type in TASK_TYPES, owner, f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
    if task_type == PRETRAINING:
        require(num_classes == RECONSTRUCTION_CHANNELS and not deep_supervision, owner,
                f"the pretraining network reconstructs its input: num_classes must be {RECONSTRUCTION_CHANNELS} "
                f"and deep supervision off, got {num_classes} and {deep_supervision}")
    if task_type in DECODER_TASK_TYPES:
        require(head_dropout == 0.0 and head_pool_levels == default_pool_levels
                and head_pooling == DEFAULT_HEAD_POOLING, owner,
                "head_dropout / head_pool_levels / head_pooling apply to classification and regression only")
        return
    require(not deep_supervision, owner, f"deep supervision needs a decoder, which {task_type} does not build")
    require(0.0 <= head_dropout < 1.0, owner, f"head_dropout must be in [0, 1), got {head_dropout!r}")
    require(len(head_pool_levels) > 0 and len(set(head_pool_levels)) == len(head_pool_levels)
            and all(0 <= level < n_stages for level in head_pool_levels), owner,
            f"head_pool_levels must be distinct levels in 0..{n_stages - 1}, got {head_pool_levels!r}")
    require(head_pooling in POOLINGS, owner, f"head_pooling must be one of {POOLINGS}, got {head_pooling!r}")


class EncoderWithTop(nn.Module):
    """An ``encoder`` (set by the subclass, returning the skips of every level) followed by ``decoder`` or ``head``.

    Subclasses build ``self.encoder`` and then call :meth:`_attach_top`; they set ``task_type`` and ``n_stages``.
    """

    encoder: nn.Module
    task_type: str
    n_stages: int

    def _attach_top(self, num_classes: int, decoder_convs: int, deep_supervision: bool,
                    level_channels: Sequence[int], head_pool_levels: Sequence[int], head_dropout: float,
                    head_pooling: str) -> None:
        """The decoder (segmentation, pretraining) or the pooling head (classification, regression)."""
        if self.task_type in DECODER_TASK_TYPES:
            # DNA's decoder concatenates [upsampled, skip], FOMO's order; its seg_layers[-1] is the output conv.
            self.decoder = UNetDecoder(self.encoder, num_classes, decoder_convs, deep_supervision)
            if self.task_type == PRETRAINING:
                # Without deep supervision DNA uses seg_layers[-1] only; the others would hold untrained tensors.
                for index in range(len(self.decoder.seg_layers) - 1):
                    self.decoder.seg_layers[index] = nn.Identity()
        else:
            self.head = PoolingHead(level_channels, head_pool_levels, num_classes, head_dropout, head_pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segmentation logits (a list with deep supervision) or image-level outputs [B, num_classes]."""
        skips = self.encoder(x)
        if self.task_type in DECODER_TASK_TYPES:
            return self.decoder(skips)
        return self.head(skips)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Number of feature-map voxels for one input patch (nnU-Net's planners estimate memory with it)."""
        size = self.encoder.compute_conv_feature_map_size(input_size)
        if self.task_type in DECODER_TASK_TYPES:
            size += self.decoder.compute_conv_feature_map_size(input_size)
        return size

"""Prediction heads on top of the FOMO encoder, for image-level tasks (classification, regression)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: Index of the first spatial axis in a [B, C, X, Y, Z] feature map.
_FIRST_SPATIAL_DIM = 2
#: Global poolings of a feature map: its mean, its maximum, or both (concatenated).
POOLINGS = ("avg", "max", "avgmax")


class PoolingHead(nn.Module):
    """Global pooling of selected encoder levels -> concatenation -> dropout -> one Linear layer.

    With average pooling of the single bottleneck level this is the FOMO baseline's head. Every encoder block
    ends in instance norm, which sets each channel's mean and variance over the volume: the average of a
    channel then says little about the case, while its maximum still tells whether (and how strongly) a
    pattern occurs anywhere, e.g. a lesion. ``pooling="max"`` (or ``"avgmax"``, both) keeps that. Pooling
    shallower levels as well gives the linear layer finer-grained features, which helps on tiny datasets.
    """

    def __init__(self, level_channels: Sequence[int], pool_levels: Sequence[int], num_outputs: int,
                 dropout: float = 0.0, pooling: str = "avg"):
        """``level_channels[i]`` is the channel count of encoder level i; ``pool_levels`` picks the pooled levels;
        ``pooling`` is one of :data:`POOLINGS`."""
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pool_levels = tuple(pool_levels)
        self.pooling = pooling
        self.dropout = nn.Dropout(p=dropout)
        per_channel = 2 if pooling == "avgmax" else 1
        self.linear = nn.Linear(per_channel * sum(level_channels[level] for level in self.pool_levels), num_outputs)

    def _pool(self, features: torch.Tensor) -> list[torch.Tensor]:
        flat = features.flatten(_FIRST_SPATIAL_DIM)
        return [*([flat.mean(dim=-1)] if self.pooling != "max" else []),
                *([flat.amax(dim=-1)] if self.pooling != "avg" else [])]

    def pooled_features(self, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """The pooled levels concatenated, [B, features]: what the linear layer sees (and a linear probe fits)."""
        return torch.cat([p for level in self.pool_levels for p in self._pool(skips[level])], dim=1)

    def forward(self, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """Map the encoder outputs of every level (shallowest first) to [B, num_outputs]."""
        return self.linear(self.dropout(self.pooled_features(skips)))

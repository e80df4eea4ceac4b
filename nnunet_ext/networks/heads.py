"""Prediction heads on top of the FOMO encoder, for image-level tasks (classification, regression)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: Index of the first spatial axis in a [B, C, X, Y, Z] feature map.
_FIRST_SPATIAL_DIM = 2


class PoolingHead(nn.Module):
    """Global average pooling of selected encoder levels -> concatenation -> dropout -> one Linear layer.

    With the default single level (the bottleneck) this is the FOMO baseline's head; pooling shallower levels as
    well gives the linear layer finer-grained features, which can help on tiny datasets.
    """

    def __init__(self, level_channels: Sequence[int], pool_levels: Sequence[int], num_outputs: int,
                 dropout: float = 0.0):
        """``level_channels[i]`` is the channel count of encoder level i; ``pool_levels`` picks the pooled levels."""
        super().__init__()
        self.pool_levels = tuple(pool_levels)
        self.dropout = nn.Dropout(p=dropout)
        self.linear = nn.Linear(sum(level_channels[level] for level in self.pool_levels), num_outputs)

    def forward(self, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """Map the encoder outputs of every level (shallowest first) to [B, num_outputs]."""
        pooled = [skips[level].flatten(_FIRST_SPATIAL_DIM).mean(dim=-1) for level in self.pool_levels]
        return self.linear(self.dropout(torch.cat(pooled, dim=1)))

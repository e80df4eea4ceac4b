"""Masked image modelling as the FOMO baseline pretrained its encoder (fomo_reference.md, section 6).

The volume is divided into cubes of :data:`MASK_CUBE_EDGE` voxels; a random :data:`MASK_RATIO` of them is set to
0 and the network reconstructs the whole, unmasked volume. The random draw (:func:`draw_cube_mask`) is apart from
its application (:func:`apply_mask`), so a validation can replay the same masks and a test can check each alone.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

#: Edge of the masked cubes, in voxels (the baseline's ``mask_patch_size``).
MASK_CUBE_EDGE = 4
#: Fraction of the cubes that are masked (the baseline's ``mask_ratio``).
MASK_RATIO = 0.6
#: Value written into masked voxels (the baseline sets them to 0, the background of its [0, 1] normalisation).
MASKED_VALUE = 0.0


def cubes_to_mask(n_cubes: int, ratio: float) -> int:
    """How many of ``n_cubes`` cubes are masked: ``ratio`` of them, rounded to the nearest count (at least one
    and at most all but one where there are two or more, so there is always something to reconstruct from)."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must lie strictly between 0 and 1, got {ratio!r}")
    if n_cubes < 2:
        raise ValueError(f"a volume of {n_cubes} cube(s) cannot be masked in part")
    return min(n_cubes - 1, max(1, round(ratio * n_cubes)))


def draw_cube_mask(batch: int, spatial_shape: Sequence[int], generator: torch.Generator,
                   cube_edge: int = MASK_CUBE_EDGE, ratio: float = MASK_RATIO,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """A boolean mask [batch, 1, *spatial_shape], True where a voxel is masked.

    Every sample gets exactly :func:`cubes_to_mask` masked cubes of a grid of ``cube_edge`` cubes laid from the
    volume's origin (cubes at the far edges are cut off where an axis is no multiple of the edge). The draw
    happens on the CPU with ``generator``, so the same seed gives the same masks on every device.
    """
    grid = [math.ceil(edge / cube_edge) for edge in spatial_shape]
    n_cubes = math.prod(grid)
    n_masked = cubes_to_mask(n_cubes, ratio)
    order = torch.rand(batch, n_cubes, generator=generator).argsort(dim=1)
    cubes = order < n_masked  # a uniformly random subset of n_masked cubes per sample
    cubes = cubes.view(batch, 1, *grid).to(device)
    for axis in range(len(grid)):
        cubes = cubes.repeat_interleave(cube_edge, dim=2 + axis)
    return cubes[(slice(None), slice(None), *(slice(0, edge) for edge in spatial_shape))]


def apply_mask(volume: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``volume`` [B, C, ...] with the masked voxels (``mask`` [B, 1, ...], broadcast over channels) set to
    :data:`MASKED_VALUE`; the input is left as it is."""
    return volume.masked_fill(mask, MASKED_VALUE)


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                        masked_only: bool = False) -> torch.Tensor:
    """Mean squared error between reconstruction and the unmasked target: over every voxel (the baseline's
    default), or over the masked voxels only (its ``rec_loss_masked_only``)."""
    if not masked_only:
        return F.mse_loss(reconstruction, target)
    weights = mask.expand_as(target).to(reconstruction.dtype)
    return ((reconstruction - target) ** 2 * weights).sum() / weights.sum()

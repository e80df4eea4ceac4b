"""Masked image modelling's pure parts: the cube mask, its application and the reconstruction loss, checked
against NumPy computations written independently of the implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_ext.trainers.masking import (
    MASK_CUBE_EDGE,
    MASK_RATIO,
    apply_mask,
    cubes_to_mask,
    draw_cube_mask,
    reconstruction_loss,
)


def cube_view(mask: np.ndarray, edge: int) -> np.ndarray:
    """[B, gx, gy, gz, edge^3] view of a [B, 1, X, Y, Z] mask whose axes are multiples of ``edge``."""
    b, _, x, y, z = mask.shape
    return mask.reshape(b, x // edge, edge, y // edge, edge, z // edge, edge).transpose(0, 1, 3, 5, 2, 4, 6) \
        .reshape(b, x // edge, y // edge, z // edge, -1)


def test_the_fomo_recipe_masks_60_percent_of_4_voxel_cubes_each_cube_whole():
    mask = draw_cube_mask(3, (16, 24, 8), torch.Generator().manual_seed(0)).numpy()
    assert mask.shape == (3, 1, 16, 24, 8) and mask.dtype == bool
    cubes = cube_view(mask, MASK_CUBE_EDGE)
    assert np.all(cubes.all(-1) | ~cubes.any(-1))  # every 4^3 cube is masked whole or not at all
    n_cubes = 4 * 6 * 2
    assert [int(c.all(-1).sum()) for c in cubes] == [round(MASK_RATIO * n_cubes)] * 3
    assert not np.array_equal(mask[0], mask[1])  # each sample draws its own cubes


def test_the_same_seed_gives_the_same_mask_and_an_odd_shape_is_cut_at_the_far_edges():
    first = draw_cube_mask(2, (10, 7, 5), torch.Generator().manual_seed(7), cube_edge=4, ratio=0.5)
    again = draw_cube_mask(2, (10, 7, 5), torch.Generator().manual_seed(7), cube_edge=4, ratio=0.5)
    assert torch.equal(first, again) and first.shape == (2, 1, 10, 7, 5)
    # the grid is laid from the origin: voxel (0, 0, 0) and (3, 3, 3) share a cube, (4, 0, 0) starts the next
    assert bool(first[0, 0, 0, 0, 0]) == bool(first[0, 0, 3, 3, 3])


def test_the_masks_are_uniform_over_the_cubes():
    generator = torch.Generator().manual_seed(1)
    counts = sum(cube_view(draw_cube_mask(50, (8, 8, 8), generator).numpy(), 4).all(-1).sum(0) for _ in range(40))
    # 2000 draws of 5 of 8 cubes: every cube is masked 2000 * 5 / 8 = 1250 times, give or take a few sd (~22)
    assert np.all(np.abs(counts - 1250) < 110), counts


@pytest.mark.parametrize("n_cubes, ratio, expected", [(10, 0.6, 6), (2, 0.6, 1), (3, 0.99, 2), (100, 0.001, 1)])
def test_masked_cube_counts_leave_something_to_see_and_something_to_reconstruct(n_cubes, ratio, expected):
    assert cubes_to_mask(n_cubes, ratio) == expected


@pytest.mark.parametrize("n_cubes, ratio", [(1, 0.6), (10, 0.0), (10, 1.0)])
def test_impossible_masks_are_refused(n_cubes, ratio):
    with pytest.raises(ValueError):
        cubes_to_mask(n_cubes, ratio)


def test_masked_voxels_become_zero_and_the_input_is_left_alone():
    volume = torch.rand(2, 1, 8, 8, 8) + 1.0
    mask = draw_cube_mask(2, (8, 8, 8), torch.Generator().manual_seed(3))
    masked = apply_mask(volume, mask)
    assert torch.all(masked[mask] == 0) and torch.equal(masked[~mask], volume[~mask])
    assert torch.all(volume >= 1.0)


def test_the_loss_is_the_mse_over_every_voxel_or_over_the_masked_ones():
    rng = np.random.default_rng(0)
    reconstruction, target = rng.random((2, 1, 8, 8, 8)), rng.random((2, 1, 8, 8, 8))
    mask = rng.random((2, 1, 8, 8, 8)) < 0.3
    tensors = [torch.from_numpy(a) for a in (reconstruction, target, mask)]
    whole = reconstruction_loss(*tensors).item()
    masked = reconstruction_loss(*tensors, masked_only=True).item()
    assert whole == pytest.approx(np.mean((reconstruction - target) ** 2))
    assert masked == pytest.approx(np.mean((reconstruction - target)[mask] ** 2))

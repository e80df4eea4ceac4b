"""Modality dropout: the training augmentation that shows a network what a missing sequence looks like."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_ext.trainers.augmentation import ModalityDropoutTransform


def _sample(channels: int = 4) -> torch.Tensor:
    return torch.rand(channels, 6, 5, 4) + 0.1  # no zero voxel anywhere


def test_always_dropping_zeroes_exactly_one_channel_never_a_kept_one():
    np.random.seed(0)
    transform = ModalityDropoutTransform(p=1.0, keep=(0,))
    dropped = []
    for _ in range(60):
        image = transform(image=_sample())["image"]
        zero = [c for c in range(4) if torch.count_nonzero(image[c]) == 0]
        assert len(zero) == 1 and zero != [0]
        assert all(torch.count_nonzero(image[c]) == image[c].numel() for c in range(4) if c not in zero)
        dropped += zero
    assert set(dropped) == {1, 2, 3}  # every droppable channel comes up


def test_never_dropping_leaves_the_sample_unchanged():
    image = _sample()
    out = ModalityDropoutTransform(p=0.0)(image=image.clone())["image"]
    torch.testing.assert_close(out, image)


def test_dropping_happens_at_the_given_rate():
    np.random.seed(1)
    transform = ModalityDropoutTransform(p=0.2)
    n = 2000
    hits = sum(any(torch.count_nonzero(c) == 0 for c in transform(image=_sample())["image"]) for _ in range(n))
    assert hits / n == pytest.approx(0.2, abs=0.03)


def test_a_single_kept_channel_is_never_dropped():
    out = ModalityDropoutTransform(p=1.0, keep=(0,))(image=_sample(1))["image"]
    assert torch.count_nonzero(out) == out.numel()


def test_probability_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="p must be"):
        ModalityDropoutTransform(p=1.5)

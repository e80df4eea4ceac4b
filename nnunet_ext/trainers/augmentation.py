"""Augmentations nnU-Net's pipeline lacks for FOMO's image-level tasks."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import ImageOnlyTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms


class ModalityDropoutTransform(ImageOnlyTransform):
    """With probability ``p``, zero one randomly chosen channel of a sample, as a missing modality arrives.

    ``fomo_convert --missing-modality zeros`` (the default) stores a missing sequence as a zero channel. A few
    training cases of a tiny dataset miss one, so a network never learns what a zero channel means and can read it
    as a finding (a zero FLAIR next to a normal DWI is unlike any healthy case it saw). Dropping channels in
    training shows it that case. Channels in ``keep`` (e.g. DWI, which every FOMO Task 1 subject has) are never
    dropped.
    """

    def __init__(self, p: float, keep: Sequence[int] = (0,)):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p
        self.keep = tuple(keep)

    def get_parameters(self, **data_dict) -> dict:
        droppable = [c for c in range(data_dict["image"].shape[0]) if c not in self.keep]
        if not droppable or np.random.uniform() >= self.p:
            return {"channel": None}
        return {"channel": int(np.random.choice(droppable))}

    def _apply_to_image(self, img: torch.Tensor, channel: int | None = None, **params) -> torch.Tensor:
        if channel is not None:
            img[channel] = 0
        return img


def with_modality_dropout(transforms: ComposeTransforms, p: float, keep: Sequence[int] = (0,)) -> ComposeTransforms:
    """nnU-Net's training pipeline with :class:`ModalityDropoutTransform` last (after the intensity transforms,
    so that the dropped channel stays exactly zero, as a stored missing modality is)."""
    transforms.transforms.append(ModalityDropoutTransform(p, keep))
    return transforms

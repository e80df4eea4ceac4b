"""``FomoFinetuneTrainer``: segmentation (FOMO Task 2) with the pretrained encoder and decoder.

Everything that makes nnU-Net good at segmentation stays nnU-Net's: Dice + CE loss, foreground oversampling,
augmentation, the sliding-window validation that writes ``validation/summary.json``, and the EMA pseudo-Dice that
picks ``checkpoint_best.pth``, so ``nnUNetv2_find_best_configuration`` and ``nnUNetv2_predict`` work unchanged.
The base class contributes the FOMO network, the pretrained weights and the fine-tuning optimiser.

Deep supervision is off by default (the pretrained decoder has one full-resolution output);
``FomoFinetuneTrainer_DeepSupervision`` turns nnU-Net's on.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from nnunet_ext.dataset_conversion.tasks import SEGMENTATION
from nnunet_ext.trainers.base import FomoTrainerBase


class FomoFinetuneTrainer(FomoTrainerBase):
    """Full fine-tuning of the pretrained UNet (encoder and decoder; the 1x1 output conv starts fresh)."""

    task_type: ClassVar[str] = SEGMENTATION


class FomoFinetuneTrainer_DeepSupervision(FomoFinetuneTrainer):
    """nnU-Net's deep supervision on the pretrained decoder; its lower-resolution output convs start untrained."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = True

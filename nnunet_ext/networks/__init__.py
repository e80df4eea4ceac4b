"""Networks: the FOMO25 UNet-B / UNet-XL, the FOMO26 / nnssl residual-encoder U-Net, and their image-level heads."""

from __future__ import annotations

from nnunet_ext.networks.heads import PoolingHead
from nnunet_ext.networks.resenc import RESENC_PRESETS, FomoResEncUNet
from nnunet_ext.networks.unet import (
    CLASSIFICATION,
    DECODER_LAYOUTS,
    FOMO_N_STAGES,
    MODEL_PRESETS,
    REGRESSION,
    SEGMENTATION,
    TASK_TYPES,
    FomoUNet,
)

__all__ = ["FomoUNet", "FomoResEncUNet", "PoolingHead", "MODEL_PRESETS", "RESENC_PRESETS", "DECODER_LAYOUTS",
           "FOMO_N_STAGES", "TASK_TYPES", "SEGMENTATION", "CLASSIFICATION", "REGRESSION"]

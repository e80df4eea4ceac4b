"""Networks: the FOMO25 UNet-B / UNet-XL and its image-level heads."""

from __future__ import annotations

from nnunet_ext.networks.heads import PoolingHead
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

__all__ = ["FomoUNet", "PoolingHead", "MODEL_PRESETS", "DECODER_LAYOUTS", "FOMO_N_STAGES", "TASK_TYPES",
           "SEGMENTATION", "CLASSIFICATION", "REGRESSION"]

"""nnunet_ext: fine-tune the FOMO25 pretrained UNet-B foundation model inside nnU-Net v2."""

__version__ = "0.1.0"

"""Every FOMO trainer under its class name, for nnU-Net's ``nnUNet_extTrainer`` lookup (nothing else here)."""

from nnunet_ext.trainers import TRAINERS

globals().update(TRAINERS)

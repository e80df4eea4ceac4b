"""Pretrained weights (FOMO25 UNets, FOMO26 / nnssl residual-encoder U-Nets): safe checkpoint reading, the explicit
key tables and transfer, the report."""

from __future__ import annotations

from nnunet_ext.pretrained.checkpoint_io import TRUST_ENV_VAR, load_fomo_state_dict, sha256_of_file
from nnunet_ext.pretrained.key_mapping import CHANNEL_ADAPTATIONS, build_key_table, transfer_fomo_weights
from nnunet_ext.pretrained.report import TransferEntry, TransferReport

__all__ = ["load_fomo_state_dict", "sha256_of_file", "TRUST_ENV_VAR", "transfer_fomo_weights",
           "build_key_table", "CHANNEL_ADAPTATIONS", "TransferReport", "TransferEntry"]

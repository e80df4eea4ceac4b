"""A tiny FOMO26 ResEnc-B checkpoint in either layout, and a raw dataset planned for ``resenc_unet_b`` with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import trainer_datasets

from nnunet_ext.env import EXT_TRAINER_VAR, TRAINER_LOOKUP_FOLDER
from nnunet_ext.preprocessing.plan_and_preprocess import fomo_plan_and_preprocess
from nnunet_ext.preprocessing.planner import FomoPlanSettings
from nnunet_ext.pretrained.resenc_layout import FOMO26, NNSSL
from nnunet_ext.pretrained.testing import make_nnssl_checkpoint, make_resenc_checkpoint, resenc_layout_for

MODEL = "resenc_unet_b"
#: resenc_unet_b scaled to 4 features in its first stage: [4, 8, 16, 32, 40, 40], blocks 1, 3, 4, 6, 6, 6.
STARTING_FILTERS = 4
#: The smallest patch a 6-stage network trains on: 5 downsamplings by 2 leave 2^3 bottleneck voxels.
PATCH = 64
#: Checkpoint writer per layout: FOMO26's Lightning file and nnssl's release file.
CHECKPOINT_WRITERS = {FOMO26: (make_resenc_checkpoint, "resenc_unet_b.ckpt"),
                      NNSSL: (make_nnssl_checkpoint, "checkpoint_final.pth")}


def plan_resenc(root: Path, dataset_id: int, monkeypatch: pytest.MonkeyPatch, naming: str = FOMO26) -> Path:
    """Plan the raw dataset ``dataset_id`` under ``root`` for resenc_unet_b with a tiny checkpoint in the layout of
    ``naming``; returns the checkpoint. nnU-Net's folders are exported through ``monkeypatch``, ready for training."""
    for name in trainer_datasets.NNUNET_DIRS:
        (root / name).mkdir(exist_ok=True)
        monkeypatch.setenv(name, str(root / name))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    monkeypatch.delenv("FOMO_PRETRAINED", raising=False)
    write, name = CHECKPOINT_WRITERS[naming]
    checkpoint = write(root / name, resenc_layout_for(MODEL, STARTING_FILTERS))
    fomo_plan_and_preprocess(dataset_id, FomoPlanSettings(model=MODEL, starting_filters=STARTING_FILTERS,
                                                          patch_size=(PATCH,) * 3, pretrained=checkpoint),
                             num_processes=1)
    for name, value in trainer_datasets.TRAINING_ENV.items():  # after planning (see nnunet_notes.md)
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(EXT_TRAINER_VAR, str(TRAINER_LOOKUP_FOLDER))
    return checkpoint

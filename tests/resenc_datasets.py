"""A tiny FOMO26 ResEnc-B checkpoint in either layout, and a raw dataset planned for ``resenc_unet_b`` with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import trainer_datasets

from nnunet_ext.env import EXT_TRAINER_VAR, TRAINER_LOOKUP_FOLDER
from nnunet_ext.inference.predict import main as fomo_predict
from nnunet_ext.preprocessing.plan_and_preprocess import fomo_plan_and_preprocess
from nnunet_ext.preprocessing.planner import FomoPlanSettings
from nnunet_ext.pretrained.resenc_layout import FOMO26, NNSSL
from nnunet_ext.pretrained.testing import (make_nnssl_checkpoint, make_resenc_checkpoint, make_resenc_state_dict,
                                          resenc_layout_for)
from nnunet_ext.trainers.pretrained_loading import TRANSFER_REPORT_FILENAME

CONFIGURATION = "3d_fullres"
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


def predict_one_case(fold: Path, raw: Path, case: str, out: Path) -> None:
    """``fomo_predict`` of one training case of ``raw`` with the trained ``fold`` alone, without mirroring."""
    images = out.parent / "images"
    images.mkdir()
    for image in raw.glob(f"imagesTr/{case}_*.nii.gz"):
        (images / image.name).symlink_to(image)
    dataset_id = raw.name[len("Dataset"):len("Dataset") + 3]
    assert fomo_predict(["-i", str(images), "-o", str(out), "-d", dataset_id, "-tr", fold.parent.name.split("__")[0],
                         "-f", "0", "-device", "cpu", "--disable_tta"]) == 0


def check_fold(fold: Path, task_type: str, naming: str = FOMO26) -> None:
    """The fold folder of a finished run: the network is FomoResEncUNet and took the whole checkpoint."""
    report = json.loads((fold / TRANSFER_REPORT_FILENAME).read_text())
    assert report["complete"] and report["network"]["family"] == "resenc"
    assert report["network"]["task_type"] == task_type
    assert report["layout"]["blocks_per_stage"] == [1, 3, 4, 6, 6, 6] and report["layout"]["naming"] == naming
    n_layout_tensors = len(make_resenc_state_dict(resenc_layout_for(MODEL, STARTING_FILTERS), naming))
    # every checkpoint tensor is accounted for: loaded, adapted (the stem) or reported unused
    sources = [entry["source"] for entry in report["entries"] if entry["source"] is not None]
    assert len(sources) == len(set(sources)) == n_layout_tensors
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["init_args"]["plans"]["configurations"][CONFIGURATION]["architecture"]["network_class_name"] \
        == "nnunet_ext.networks.FomoResEncUNet"
    assert all(torch.isfinite(t).all() for t in final["network_weights"].values() if t.is_floating_point())


def check_segmentation_fold(fold: Path, raw: Path, out: Path, naming: str = FOMO26) -> None:
    """:func:`check_fold` for segmentation, then ``fomo_predict`` of the first training case of ``raw`` with the fold
    into ``out``: a binary mask in the geometry of its image."""
    check_fold(fold, "segmentation", naming)
    network = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    assert network["decoder.seg_layers.4.weight"].shape == (2, STARTING_FILTERS, 1, 1, 1)  # background + lesion
    case = sorted(p.name[: -len(".nii.gz")] for p in (raw / "labelsTr").glob("*.nii.gz"))[0]
    predict_one_case(fold, raw, case, out)
    mask = sitk.ReadImage(str(out / f"{case}.nii.gz"))
    image = sitk.ReadImage(str(raw / "imagesTr" / f"{case}_0000.nii.gz"))
    assert mask.GetSize() == image.GetSize() and mask.GetSpacing() == image.GetSpacing()
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}

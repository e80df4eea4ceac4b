"""A tiny FOMO-planned segmentation dataset for the trainer tests, planned once per test session.

Hand-made at 1 mm (no resampling, a few seconds to preprocess) rather than converted from the synthetic FOMO
generator, whose realistic head sizes take minutes to preprocess on the shared CPUs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.pretrained.testing import make_fomo_checkpoint

DATASET_ID = 971
DATASET_NAME = f"Dataset{DATASET_ID:03d}_TrainerTest"
CONFIGURATION = "3d_fullres"
STARTING_FILTERS = 4
PATCH = 32
N_CASES = 6
CHANNELS = {"0": "DWI", "1": "FLAIR"}
SHAPE = (40, 40, 40)
#: Lesion centres (voxels, every axis) and radii: 3-9 % of the brain, inside it, large enough to learn in minutes.
LESION_CENTRE_RANGE = (15, 25)
LESION_RADIUS_RANGE = (6, 9)
NNUNET_DIRS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: nnU-Net in tests: one worker process, augmentation in the main process (see shared/nnunet_notes.md).
TRAINING_ENV = {"nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "0"}


@dataclass(frozen=True)
class PlannedDataset:
    root: Path
    checkpoint: Path

    @property
    def env(self) -> dict[str, str]:
        """nnU-Net's folders of this dataset."""
        return {name: str(self.root / name) for name in NNUNET_DIRS}

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw" / DATASET_NAME

    @property
    def plans(self) -> dict:
        return json.loads((self.root / "nnUNet_preprocessed" / DATASET_NAME / "nnUNetPlans.json").read_text())

    @property
    def dataset_json(self) -> dict:
        return json.loads((self.root / "nnUNet_preprocessed" / DATASET_NAME / "dataset.json").read_text())


def _write(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array.transpose())
    image.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(path), useCompression=True)


def _write_case(raw: Path, case: str, rng: np.random.Generator) -> None:
    """A noisy 'brain' box holding a bright sphere (the lesion) visible in both channels."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"))
    centre = rng.uniform(*LESION_CENTRE_RANGE, size=3)[:, None, None, None]
    lesion = (((grid - centre) ** 2).sum(0) <= rng.uniform(*LESION_RADIUS_RANGE) ** 2).astype(np.uint8)
    brain = np.zeros(SHAPE, dtype=np.float32)
    brain[4:-4, 4:-4, 4:-4] = 1.0
    for channel in CHANNELS:
        image = brain * (1.0 + 0.2 * rng.standard_normal(SHAPE)) + 2.0 * lesion
        _write(image.astype(np.float32), raw / "imagesTr" / f"{case}_{int(channel):04d}.nii.gz")
    _write(lesion, raw / "labelsTr" / f"{case}.nii.gz")


def make_raw_dataset(raw: Path) -> None:
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    cases = [f"sub_{i}_ses_1" for i in range(1, N_CASES + 1)]
    for case in cases:
        _write_case(raw, case, rng)
    dataset_json = {
        "channel_names": CHANNELS, "labels": {"background": 0, "meningioma": 1}, "numTraining": N_CASES,
        "file_ending": ".nii.gz",
        "fomo": {"task_id": 2, "task_type": "segmentation", "target_name": "meningioma", "num_classes": 2,
                 "targets": {case: 0.0 for case in cases}, "subjects": {case: case[:-6] for case in cases}},
    }
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=2))


_PLANNED: dict[Path, PlannedDataset] = {}


def planned_segmentation_dataset(tmp_path_factory: pytest.TempPathFactory) -> PlannedDataset:
    """Raw dataset + FOMO checkpoint + ``fomo_plan_and_preprocess``, once per session (both trainer test files)."""
    from nnunet_ext.preprocessing.plan_and_preprocess import fomo_plan_and_preprocess
    from nnunet_ext.preprocessing.planner import FomoPlanSettings

    key = tmp_path_factory.getbasetemp()
    if key not in _PLANNED:
        root = tmp_path_factory.mktemp("trainer_dataset")
        dataset = PlannedDataset(root, make_fomo_checkpoint(root / "epoch=12.ckpt", starting_filters=STARTING_FILTERS))
        with pytest.MonkeyPatch.context() as mp:
            for name, value in dataset.env.items():
                Path(value).mkdir()
                mp.setenv(name, value)
            mp.setenv("nnUNet_def_n_proc", "1")
            make_raw_dataset(dataset.raw)
            fomo_plan_and_preprocess(DATASET_ID, FomoPlanSettings(starting_filters=STARTING_FILTERS,
                                                                  patch_size=(PATCH,) * 3,
                                                                  pretrained=dataset.checkpoint),
                                     num_processes=1)
        _PLANNED[key] = dataset
    return _PLANNED[key]


def use_dataset(monkeypatch: pytest.MonkeyPatch, dataset: PlannedDataset) -> None:
    """Point nnU-Net (in this process and in subprocesses) at ``dataset``, with the test's worker limits."""
    for name, value in {**dataset.env, **TRAINING_ENV}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FOMO_PRETRAINED", raising=False)

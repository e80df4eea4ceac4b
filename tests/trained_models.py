"""Tiny trained models of all three tasks, with a held-out test set, for the prediction and evaluation tests.

Each task: a tiny FOMO-planned 1 mm dataset (a copy of the trainer tests' planned dataset, planned once per
session), two folds of the task's ``_debug`` trainer trained by nnU-Net's own ``run_training`` (what
``nnUNetv2_train`` calls, final validation included), and a test set as ``fomo_convert --test-fraction`` writes
it: ``imagesTs`` (+ ``labelsTs``) and dataset.json's ``fomo.test_targets``. The test cases are copies of training
cases: these tests check the machinery, not how well a two-epoch model generalises.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch
from case_level_datasets import planned_case_level_dataset
from filelock import FileLock
from nnunetv2.run.run_training import run_training
from trainer_datasets import DATASET_NAME as SEGMENTATION_DATASET
from trainer_datasets import planned_segmentation_dataset

from nnunet_ext.dataset_conversion.tasks import get_task
from nnunet_ext.env import EXT_TRAINER_VAR, TRAINER_LOOKUP_FOLDER

FOLDS = (0, 1)
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
PATCH = 32
#: Case-level datasets: enough cases for five folds whose validation folds hold both classes.
N_CASE_LEVEL_CASES = 10
N_TEST_CASES = 3
TRAINERS = {
    "classification": "FomoClassificationTrainer_debug",
    "regression": "FomoRegressionTrainer_debug",
    "segmentation": "FomoFinetuneTrainer_debug",
}
NNUNET_DIRS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: nnU-Net in tests: one worker process, augmentation in the main process (see shared/nnunet_notes.md).
TEST_ENV = {"nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "0", EXT_TRAINER_VAR: str(TRAINER_LOOKUP_FOLDER)}


@dataclass(frozen=True)
class TrainedModel:
    """A trained two-fold model and where its dataset lives."""

    root: Path
    task_type: str
    dataset_name: str

    @property
    def trainer(self) -> str:
        return TRAINERS[self.task_type]

    @property
    def dataset_id(self) -> str:
        return str(int(self.dataset_name[len("Dataset"):len("Dataset") + 3]))

    @property
    def env(self) -> Dict[str, str]:
        return {**{name: str(self.root / name) for name in NNUNET_DIRS}, **TEST_ENV}

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw" / self.dataset_name

    @property
    def model_folder(self) -> Path:
        return self.root / "nnUNet_results" / self.dataset_name / f"{self.trainer}__{PLANS}__{CONFIGURATION}"

    @property
    def test_targets(self) -> Dict[str, float]:
        return json.loads((self.raw / "dataset.json").read_text())["fomo"]["test_targets"]

    def test_images(self, case: str) -> Tuple[Path, ...]:
        return tuple(sorted((self.raw / "imagesTs").glob(f"{case}_*.nii.gz")))


def use_model(monkeypatch: pytest.MonkeyPatch, model: TrainedModel) -> None:
    """Point nnU-Net (and our commands) at ``model``'s folders for one test."""
    for name, value in model.env.items():
        monkeypatch.setenv(name, value)


def add_test_set(raw: Path, task_type: str) -> None:
    """Hold out the last training cases' copies as ``imagesTs`` (+ ``labelsTs``) with their ``fomo.test_targets``."""
    dataset_json = json.loads((raw / "dataset.json").read_text())
    cases = sorted(p.name[: -len(".nii.gz")] for p in (raw / "labelsTr").glob("*.nii.gz"))[-N_TEST_CASES:]
    (raw / "imagesTs").mkdir()
    for case in cases:
        for image in (raw / "imagesTr").glob(f"{case}_*.nii.gz"):
            shutil.copy(image, raw / "imagesTs" / image.name)
    if task_type == "segmentation":
        (raw / "labelsTs").mkdir()
        for case in cases:
            shutil.copy(raw / "labelsTr" / f"{case}.nii.gz", raw / "labelsTs" / f"{case}.nii.gz")
    dataset_json["fomo"]["test_targets"] = {case: dataset_json["fomo"]["targets"][case] for case in cases}
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=2))


def plan_segmentation(root: Path, monkeypatch: pytest.MonkeyPatch,
                      tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """The segmentation trainer tests' planned dataset, copied into a folder of its own (they train in theirs): its
    raw and preprocessed folders, planned once per session (the plans name its checkpoint, which stays in place)."""
    model = TrainedModel(root, "segmentation", SEGMENTATION_DATASET)
    planned = planned_segmentation_dataset(tmp_path_factory)
    for name in NNUNET_DIRS:
        if name != "nnUNet_results":
            shutil.copytree(planned.root / name / SEGMENTATION_DATASET, root / name / SEGMENTATION_DATASET)
        (root / name).mkdir(exist_ok=True)
        monkeypatch.setenv(name, str(root / name))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    return model


def name_channels_as_the_task(model: TrainedModel) -> None:
    """The tiny datasets call their two channels DWI and FLAIR; give them the task's first two channel names
    (T1, T2 for Task 3), so that FOMO inputs map onto them as on a converted dataset."""
    for folder in (model.raw, model.root / "nnUNet_preprocessed" / model.dataset_name):
        dataset_json = json.loads((folder / "dataset.json").read_text())
        names = get_task(dataset_json["fomo"]["task_id"]).channel_names
        dataset_json["channel_names"] = {key: names[int(key)] for key in dataset_json["channel_names"]}
        (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))


def plan(task_type: str, root: Path, monkeypatch: pytest.MonkeyPatch,
         tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """Raw dataset + FOMO checkpoint + planning of ``task_type``'s tiny dataset (not trained yet): a copy of the
    trainer tests' planned dataset, planned once per session."""
    if task_type == "segmentation":
        model = plan_segmentation(root, monkeypatch, tmp_path_factory)
    else:
        dataset = planned_case_level_dataset(tmp_path_factory, root, task_type, N_CASE_LEVEL_CASES, monkeypatch)
        model = TrainedModel(dataset.root, task_type, dataset.name)
    name_channels_as_the_task(model)
    return model


def train_model(task_type: str, tmp_path_factory: pytest.TempPathFactory, root: Path) -> TrainedModel:
    """Plan, train :data:`FOLDS` of the ``_debug`` trainer on the CPU in the new folder ``root``, add the test set."""
    root.mkdir()
    with pytest.MonkeyPatch.context() as monkeypatch:
        model = plan(task_type, root, monkeypatch, tmp_path_factory)
        use_model(monkeypatch, model)
        for fold in FOLDS:
            run_training(model.dataset_name, CONFIGURATION, fold, model.trainer, PLANS, device=torch.device("cpu"))
    add_test_set(model.raw, task_type)
    return model


def session_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder all pytest-xdist workers of this test session share (without xdist: the session's own)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def trained_once(task_type: str, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """:func:`train_model`, once per test session however many xdist workers ask: the first trains under a file
    lock, the others wait for it and use its model (the tests only read it)."""
    folder = session_folder(tmp_path_factory)
    record = folder / f"trained_{task_type}.json"
    with FileLock(f"{record}.lock"):
        if not record.is_file():
            model = train_model(task_type, tmp_path_factory, folder / f"trained_{task_type}")
            record.write_text(json.dumps({"root": str(model.root), "dataset_name": model.dataset_name}))
        saved = json.loads(record.read_text())
    return TrainedModel(Path(saved["root"]), task_type, saved["dataset_name"])

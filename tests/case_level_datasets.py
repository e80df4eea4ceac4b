"""Tiny FOMO-planned classification and regression datasets for the case-level trainer tests.

Hand-made at 1 mm like ``trainer_datasets`` (the realistic synthetic heads take minutes to preprocess on the
shared CPUs), in the layout ``fomo_convert`` writes: the brain mask as label map, per-case targets in
dataset.json's ``fomo.targets``, and a ``splits_final.json`` whose validation folds hold both classes.
The targets are visible in the images: a bright blob for the positive class, a dark central "ventricle"
that grows with age.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.run.run_training import run_training

from nnunet_ext.env import EXT_TRAINER_VAR, TRAINER_LOOKUP_FOLDER
from nnunet_ext.pretrained.testing import make_fomo_checkpoint

CONFIGURATION = "3d_fullres"
STARTING_FILTERS = 4
PATCH = 32
CHANNELS = {"0": "DWI", "1": "FLAIR"}
#: Volume and brain box (voxels at 1 mm): nnU-Net crops to the brain, leaving a 32^3 whole case = one patch.
SHAPE = (40, 40, 40)
BRAIN = (slice(4, 36),) * 3
N_FOLDS = 5
NNUNET_DIRS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: nnU-Net in tests: one worker process, augmentation in the main process (see shared/nnunet_notes.md).
TRAINING_ENV = {"nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "0"}
TASKS = {
    "classification": {"task_id": 1, "target_name": "infarct", "num_classes": 2, "dataset_id": 981},
    "regression": {"task_id": 3, "target_name": "age", "num_classes": 1, "dataset_id": 983},
}


@dataclass(frozen=True)
class CaseLevelDataset:
    root: Path
    task_type: str
    dataset_id: int
    targets: dict
    n_folds: int = N_FOLDS

    @property
    def name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.task_type.capitalize()}Test"

    @property
    def env(self) -> dict[str, str]:
        return {**{name: str(self.root / name) for name in NNUNET_DIRS}, **TRAINING_ENV}

    @property
    def splits(self) -> list[dict]:
        return json.loads((self.root / "nnUNet_preprocessed" / self.name / "splits_final.json").read_text())

    def fold_folder(self, trainer: str, fold: int = 0) -> Path:
        return self.root / "nnUNet_results" / self.name / f"{trainer}__nnUNetPlans__{CONFIGURATION}" / f"fold_{fold}"

    def train(self, trainer: str, fold: int = 0, **kwargs) -> Path:
        """nnU-Net's own ``run_training`` (what ``nnUNetv2_train`` calls) on the CPU; returns the fold folder."""
        import torch

        run_training(self.name, CONFIGURATION, fold, trainer, device=torch.device("cpu"), **kwargs)
        return self.fold_folder(trainer, fold)


def _write(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose()))
    image.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(path), useCompression=True)


def _ball(centre: np.ndarray, radius: float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"))
    return ((grid - centre[:, None, None, None]) ** 2).sum(0) <= radius ** 2


def case_targets(task_type: str, n_cases: int) -> dict:
    """Alternating classes, or ages spread over 20-80."""
    cases = [f"sub_{i}_ses_1" for i in range(1, n_cases + 1)]
    if task_type == "classification":
        return {case: i % 2 for i, case in enumerate(cases)}
    ages = np.random.default_rng(1).permutation(np.linspace(20.0, 80.0, n_cases))
    return {case: round(float(age), 1) for case, age in zip(cases, ages)}


def _image(task_type: str, target: float, rng: np.random.Generator) -> np.ndarray:
    brain = np.zeros(SHAPE, dtype=np.float32)
    brain[BRAIN] = 1.0
    image = brain * (1.0 + 0.1 * rng.standard_normal(SHAPE))
    if task_type == "classification" and target == 1:
        image += 2.0 * _ball(rng.uniform(12, 28, size=3), rng.uniform(3, 5))
    if task_type == "regression":
        image[_ball(np.full(3, 20.0), 2.0 + target / 10.0)] = 0.2  # the ventricle widens with age
    return image.astype(np.float32)


def make_raw_dataset(dataset: CaseLevelDataset) -> None:
    """imagesTr, the brain masks in labelsTr, dataset.json with ``fomo`` and splits_final.json."""
    raw = dataset.root / "nnUNet_raw" / dataset.name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for case, target in dataset.targets.items():
        for channel in CHANNELS:
            _write(_image(dataset.task_type, target, rng), raw / "imagesTr" / f"{case}_{int(channel):04d}.nii.gz")
        mask = np.zeros(SHAPE, dtype=np.uint8)
        mask[BRAIN] = 1
        _write(mask, raw / "labelsTr" / f"{case}.nii.gz")
    task = TASKS[dataset.task_type]
    cases = list(dataset.targets)
    dataset_json = {
        "channel_names": CHANNELS, "labels": {"background": 0, "brain": 1}, "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "fomo": {"task_id": task["task_id"], "task_type": dataset.task_type, "target_name": task["target_name"],
                 "num_classes": task["num_classes"], "label_map": "brain_mask", "targets": dataset.targets,
                 "test_targets": {}, "subjects": {case: case[:-6] for case in cases}},
    }
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    # stratified: dealing the cases out in target order gives every fold both classes / the whole age range
    by_target = sorted(cases, key=lambda case: (dataset.targets[case], case))
    folds = [by_target[i::dataset.n_folds] for i in range(dataset.n_folds)]
    splits = [{"train": [c for c in cases if c not in val], "val": val} for val in folds]
    (raw / "splits_final.json").write_text(json.dumps(splits, indent=2))


def _use_folders(root: Path, monkeypatch) -> None:
    """nnU-Net's folders under ``root``, exported; one worker process; no ``$FOMO_PRETRAINED``."""
    for name in NNUNET_DIRS:
        (root / name).mkdir(exist_ok=True)
        monkeypatch.setenv(name, str(root / name))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    monkeypatch.delenv("FOMO_PRETRAINED", raising=False)


def _use_for_training(monkeypatch) -> None:
    # nnUNet_n_proc_DA=0 only after planning: during planning it makes nnU-Net call torch.set_num_threads(0)
    for name, value in TRAINING_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(EXT_TRAINER_VAR, str(TRAINER_LOOKUP_FOLDER))


def plan_case_level_dataset(root: Path, task_type: str, n_cases: int, monkeypatch,
                            n_folds: int = N_FOLDS) -> CaseLevelDataset:
    """Raw dataset + tiny FOMO checkpoint + ``fomo_plan_and_preprocess``; nnU-Net's env set via ``monkeypatch``."""
    from nnunet_ext.preprocessing.plan_and_preprocess import fomo_plan_and_preprocess
    from nnunet_ext.preprocessing.planner import FomoPlanSettings

    dataset = CaseLevelDataset(root, task_type, TASKS[task_type]["dataset_id"], case_targets(task_type, n_cases),
                               n_folds)
    _use_folders(root, monkeypatch)
    make_raw_dataset(dataset)
    checkpoint = make_fomo_checkpoint(root / "epoch=12.ckpt", starting_filters=STARTING_FILTERS)
    fomo_plan_and_preprocess(dataset.dataset_id, FomoPlanSettings(starting_filters=STARTING_FILTERS,
                                                                  patch_size=(PATCH,) * 3, pretrained=checkpoint),
                             num_processes=1)
    _use_for_training(monkeypatch)
    return dataset


#: Datasets planned once per session (per pytest base temp folder and (task type, cases, folds)), never handed out
#: themselves: :func:`planned_case_level_dataset` gives each user a copy.
_TEMPLATES: dict[tuple, CaseLevelDataset] = {}


def planned_case_level_dataset(tmp_path_factory: pytest.TempPathFactory, root: Path, task_type: str, n_cases: int,
                               monkeypatch, n_folds: int = N_FOLDS) -> CaseLevelDataset:
    """What :func:`plan_case_level_dataset` leaves in ``root``, without planning again: a copy of the raw and
    preprocessed folders of a dataset planned the same way once per session (planning is deterministic; the plans
    name that dataset's checkpoint, which stays in place for the session). Each user trains (and may rewrite its
    dataset.json) in its own copy; nnU-Net's env is set via ``monkeypatch`` as by :func:`plan_case_level_dataset`."""
    key = (tmp_path_factory.getbasetemp(), task_type, n_cases, n_folds)
    if key not in _TEMPLATES:
        with pytest.MonkeyPatch.context() as mp:
            _TEMPLATES[key] = plan_case_level_dataset(tmp_path_factory.mktemp(f"planned_{task_type}"), task_type,
                                                      n_cases, mp, n_folds)
    template = _TEMPLATES[key]
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(template.root / name / template.name, root / name / template.name)
    _use_folders(root, monkeypatch)
    _use_for_training(monkeypatch)
    return replace(template, root=root)


def shortened(family: type, epochs: int, iterations: int, learning_rate: float) -> type:
    """A subclass of trainer ``family`` running ``epochs`` x ``iterations`` at ``learning_rate``, without early
    stopping."""

    # nnU-Net records the constructor's parameters by name: keep its exact signature
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device=None):
        family.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.initial_lr = epochs, iterations, learning_rate
        self.early_stopping_patience = None

    return type(f"{family.__name__}_{epochs}x{iterations}", (family,), {"__init__": __init__})


def build_trainer(dataset: CaseLevelDataset, trainer_class: type, fold: int = 0):
    """``trainer_class`` for ``dataset`` on the CPU, as nnU-Net's ``get_trainer_from_args`` builds it."""
    import torch

    preprocessed = dataset.root / "nnUNet_preprocessed" / dataset.name
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    return trainer_class({**plans, "continue_training": False}, CONFIGURATION, fold, dataset_json,
                         torch.device("cpu"))


def fit_a_handful(dataset: CaseLevelDataset, family: type, n_cases: int, steps: int, learning_rate: float):
    """The learning check: ``family`` fitted, seeded, for ``steps`` steps at ``learning_rate`` on ``n_cases`` whole
    training cases of ``dataset``; returns the :class:`learning.Fit` and the trainer.

    The head starts random: this checks the training step, and a head already fitted to the training cases by the
    linear probe (``head_from_linear_probe``, tested on its own) would leave it nothing to learn."""
    from learning import fit_whole_cases, seed_everything

    seed_everything()
    short = shortened(family, 1, steps, learning_rate)
    trainer = build_trainer(dataset, type(short.__name__, (short,), {"head_from_linear_probe": False}))
    return fit_whole_cases(trainer, n_cases, steps), trainer


def whole_training_cases(trainer) -> tuple[list[str], dict, np.ndarray]:
    """The trainer's fold's training cases: their ids (sorted), whole volumes and the deepest encoder level averaged
    over each volume (computed here, apart from the head's own pooling), for the head's linear-probe start."""
    import torch

    from nnunet_ext.trainers.case_validation import load_volumes, pad_for_network

    cases = sorted(trainer.do_split()[0])
    volumes = load_volumes(trainer._cases_dataset(cases))
    network = trainer.network.eval()
    with torch.no_grad():
        features = np.stack([network.encoder(pad_for_network(network, torch.from_numpy(volumes[c]))[None])[-1]
                             .mean(dim=(2, 3, 4))[0].double().numpy() for c in cases])
    return cases, volumes, features


def train_in_process(dataset: CaseLevelDataset, trainer_class: type, fold: int = 0) -> Path:
    """Train and validate ``trainer_class`` (no nnU-Net lookup needed) on the CPU; returns the fold folder."""
    trainer = build_trainer(dataset, trainer_class, fold)
    trainer.run_training()
    trainer.perform_actual_validation()
    return Path(trainer.output_folder)

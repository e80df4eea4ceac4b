"""Real-data benchmark of the Task 3 pipeline: 5-fold cross-validated brain age on 109 IXI T1 scans.

``fomo_convert`` (5 seeded, stratified folds, no test split) -> ``fomo_plan_and_preprocess`` (2 mm by default) ->
the 5 folds of ``FomoRegressionTrainer`` (from scratch: ``_Scratch``; or from ``--pretrained CKPT``), trained in
this process through nnU-Net's own trainer API on the CPU (or ``--device cuda``) -> pooled out-of-fold MAE, RMSE,
Pearson r, R2 and mean error with bootstrap 95% CIs (and per fold), next to two baselines computed on the same
folds: predicting the training fold's mean age, and ridge regression on downsampled voxels (scikit-learn).

Everything stays under ``--out``: nnU-Net's three folders (the trained folds are an ordinary nnU-Net results
folder, so ``fomo_predict`` applies their ensemble to new subjects), ``ixi_brain_age.json`` and
``ixi_brain_age.png`` (predicted vs true age with the identity line; Bland-Altman).

CPU budget of the default run: 35 minutes in all (``--budget-minutes``), on 2 cores: conversion and planning
(about 1.5 minutes), then 5 folds sharing the rest, each 6 epochs whose first (8 steps of batch 2 of whole heads, 128 x
128 x 96 voxels of 2 mm) times this machine and sizes the steps of the other five to the fold's share, and a whole-case
validation per epoch; 8 starting filters. ``--iterations N`` trains a fixed 6 x N steps per fold instead. The
out-of-fold predictions come from each fold's last epoch. ``--quick`` is a smoke run of about 1.5 minutes
(12 subjects at 4 mm, 2 short epochs per fold) that only shows the machinery works.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a clone without installing
    sys.path.insert(0, str(REPO))

from reporting import check_device, check_out_folder  # noqa: E402  (beside this script)

from nnunet_ext.errors import FomoInputError, cli_entry  # noqa: E402  (light: no nnU-Net import)

#: The data as shipped next to the clone (see ../shared/data/README.md).
DEFAULT_IXI = REPO.parent / "shared" / "data" / "ixi_brain_age"
#: nnU-Net dataset id of the benchmark (7xx: out of the way of real and demo datasets).
DATASET_ID = 731
FOMO_TASK = 3
CONFIGURATION = "3d_fullres"
N_FOLDS = 5
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: A file marking a folder as this benchmark's own, so that a re-run may replace it and nothing else.
MARKER = ".ixi_brain_age_benchmark"
RESULT_STEM = "ixi_brain_age"

#: From-scratch trainer (the recipe of ``FomoRegressionTrainer`` without pretrained weights) and the one used
#: with ``--pretrained``.
SCRATCH_TRAINER = "FomoRegressionTrainer_Scratch"
PRETRAINED_TRAINER = "FomoRegressionTrainer"

#: CPU defaults, sized for the budget in the module docstring.
DEFAULT_SPACING_MM = 2.0
DEFAULT_STARTING_FILTERS = 8
DEFAULT_EPOCHS = 6
#: Stated CPU budget of the default run (all 5 folds, 2 cores, conversion, planning and baselines included).
CPU_BUDGET_MINUTES = 35
#: Patch edges are multiples of this (the encoder's 4 poolings) and at least this long (see the planner).
PATCH_MULTIPLE = 16
MIN_PATCH_EDGE = 32
#: Rounding slack when turning an extent in mm into voxels.
SHAPE_TOLERANCE_VOXELS = 1e-3
#: Steps of the first epoch of a budgeted fold, which times the machine (see :class:`TimeBudget`).
BUDGET_FIRST_EPOCH_ITERATIONS = 8
MIN_BUDGET_ITERATIONS = 1
#: Seconds of the budget kept for the baselines, the bootstrap and the figure after the last fold.
REPORT_RESERVE_S = 60

#: ``--quick``: a smoke run (a few minutes) of the whole benchmark on a subset at a coarse spacing.
QUICK_SUBJECTS = 12
QUICK_SPACING_MM = 4.0
QUICK_EPOCHS = 2
QUICK_ITERATIONS = 2
#: A budget too small for more than the minimum of steps: the quick run still goes through :class:`TimeBudget`.
QUICK_BUDGET_MINUTES = 1.0
QUICK_BOOTSTRAP = 100

#: Bootstrap resamples per confidence interval, and their seed.
DEFAULT_BOOTSTRAP = 2000
#: Metrics reported (keys of ``nnunet_ext.metrics.regression_metrics``).
REPORTED_METRICS = ("mae", "rmse", "pearson_r", "r2", "mean_error")

#: Ridge baseline: voxels averaged in blocks of this many voxels per axis (2 mm -> 6 mm), then each feature
#: standardised on the training fold; the penalty is chosen by RidgeCV's leave-one-out error within the fold.
RIDGE_BLOCK = 3
RIDGE_ALPHAS = np.logspace(0, 7, 15)

MODEL_CNN = "cnn"
MODEL_MEAN = "training_mean"
MODEL_RIDGE = "ridge_voxels"


@dataclass(frozen=True)
class Schedule:
    """Length of one fold's training: ``epochs`` x ``iterations`` steps, a whole-case validation per epoch.

    With ``budget_s`` (seconds for the fold, validation included), ``iterations`` is only the length of the first
    epoch, which times the machine; the remaining epochs get as many steps as the budget leaves (see
    :class:`TimeBudget`).
    """

    epochs: int
    iterations: int
    #: None: the trainer's own peak learning rate.
    learning_rate: Optional[float] = None
    budget_s: Optional[float] = None


class TimeBudget:
    """Sizes a fold's epochs to a wall-clock budget, measured on this machine during the first epoch.

    nnU-Net's loop fixes the number of epochs when it starts but reads ``num_iterations_per_epoch`` every epoch, so
    the epoch count (and with it the cosine schedule) stays as planned and only the steps per epoch adapt. After
    the first epoch: time per step (data loading and augmentation included), the per-epoch overhead (whole-case
    validation, plots, checkpoints) and the final validation (one pass per mirroring of the test-time
    augmentation) give the steps that fit in the time left.
    """

    def __init__(self, trainer, budget_s: float, started: float):
        self.trainer, self.budget_s, self.started = trainer, budget_s, started
        self.epoch_started = self.train_started = self.train_seconds = self.validation_seconds = 0.0
        for hook in ("on_epoch_start", "on_train_epoch_start", "on_train_epoch_end", "on_validation_epoch_end",
                     "on_epoch_end"):
            setattr(trainer, hook, self._wrap(hook, getattr(trainer, hook)))

    def _wrap(self, hook: str, method):
        def wrapped(*args, **kwargs):
            before = time.monotonic()
            if hook == "on_epoch_start":
                self.epoch_started = before
            elif hook == "on_train_epoch_start":
                self.train_started = before
            result = method(*args, **kwargs)
            after = time.monotonic()
            if hook == "on_train_epoch_end":
                self.train_seconds = after - self.train_started
            elif hook == "on_validation_epoch_end":
                self.validation_seconds = after - before
            elif hook == "on_epoch_end" and self.trainer.current_epoch == 1:
                self._resize(after)
            return result
        return wrapped

    def _resize(self, now: float) -> None:
        trainer = self.trainer
        step_s = self.train_seconds / trainer.num_iterations_per_epoch
        overhead_s = (now - self.epoch_started) - self.train_seconds
        passes = 2 ** len(trainer.inference_allowed_mirroring_axes or ())
        left_s = self.budget_s - (now - self.started) - passes * self.validation_seconds
        remaining_epochs = trainer.num_epochs - 1
        steps = int((left_s / remaining_epochs - overhead_s) / step_s) if remaining_epochs else 0
        trainer.num_iterations_per_epoch = max(MIN_BUDGET_ITERATIONS, steps)
        trainer.print_to_log_file(
            f"Time budget {self.budget_s:.0f} s: {step_s:.2f} s per step, {overhead_s:.1f} s per epoch besides, "
            f"{left_s:.0f} s left -> {trainer.num_iterations_per_epoch} steps in each of the {remaining_epochs} "
            "remaining epochs", also_print_to_console=True)


@dataclass(frozen=True)
class BenchmarkSettings:
    ixi: Path
    out: Path
    spacing: Tuple[float, ...]
    starting_filters: Optional[int]
    patch_size: Optional[Tuple[int, int, int]]
    pretrained: Optional[Path]
    schedule: Schedule
    folds: Tuple[int, ...] = tuple(range(N_FOLDS))
    subjects: Optional[int] = None
    seed: int = 0
    n_bootstrap: int = DEFAULT_BOOTSTRAP
    device: str = "cpu"
    #: Wall-clock budget of the whole run; None: the schedule's fixed epochs x iterations.
    budget_minutes: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    #: The trainer of a run from ``pretrained`` (a variant of the regression trainer).
    pretrained_trainer: str = PRETRAINED_TRAINER
    #: The head's pooled encoder levels and pooling (``fomo_plan_and_preprocess --head-pool-levels / --head-pooling``);
    #: None: the plans' defaults.
    head_pool_levels: Optional[Tuple[int, ...]] = None
    head_pooling: Optional[str] = None

    @property
    def trainer(self) -> str:
        return self.pretrained_trainer if self.pretrained else SCRATCH_TRAINER


# -- set-up -------------------------------------------------------------------------------------------------


def check_inputs(settings: BenchmarkSettings) -> None:
    """Refuse bad ``--out``, ``--device``, ``--ixi`` or ``--pretrained`` before anything is created."""
    check_out_folder(settings.out)
    check_device(settings.device)
    check_ixi(settings.ixi)
    if settings.pretrained is not None:
        checkpoint_layout(settings.pretrained)


def prepare_output(out: Path, marker: str = MARKER, writer: str = "benchmarks/ixi_brain_age.py") -> None:
    """Start from an empty ``out``: a previous output of ``writer`` (its ``marker`` file) is replaced, any other
    non-empty folder refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / marker).exists():
            raise FomoInputError("the folder is not empty and is no output of this benchmark; choose another --out",
                                 out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / marker).write_text(f"written by {writer}; a re-run replaces this folder\n")


def configure_environment(out: Path) -> None:
    """nnU-Net's folders under ``out`` and its CPU settings, set before anything imports nnunetv2 (its paths module
    reads them once, at import)."""
    for name in NNUNET_FOLDERS:
        (out / name).mkdir(exist_ok=True)
        os.environ[name] = str(out / name)
    # One worker process: on a few cores nnU-Net's default of 8 only adds start-up time and memory.
    os.environ["nnUNet_def_n_proc"] = "1"
    from nnunet_ext.env import EXT_TRAINER_VAR, ext_trainer_value
    os.environ[EXT_TRAINER_VAR] = ext_trainer_value(os.environ.get(EXT_TRAINER_VAR))


def check_ixi(ixi: Path) -> List[str]:
    """The subject folders of the IXI copy, refusing a folder that is not in the FOMO Task 3 layout."""
    if not (ixi / "preprocessed").is_dir() or not (ixi / "labels").is_dir():
        raise FomoInputError("expected the FOMO Task 3 layout (preprocessed/sub_<N>/, labels/sub_<N>/)", ixi)
    subjects = sorted(p.name for p in (ixi / "preprocessed").iterdir() if p.is_dir())
    if len(subjects) < N_FOLDS:
        raise FomoInputError(f"{len(subjects)} subjects: {N_FOLDS}-fold cross-validation needs at least {N_FOLDS}",
                             ixi)
    return subjects


def subset_folder(ixi: Path, n_subjects: int, work: Path) -> Path:
    """A FOMO folder linking the first ``n_subjects`` subjects of ``ixi`` (``--quick``, ``--subjects``)."""
    subjects = check_ixi(ixi)[:n_subjects]
    target = work / "ixi_subset"
    for part in ("preprocessed", "labels"):
        (target / part).mkdir(parents=True, exist_ok=True)
        for subject in subjects:
            (target / part / subject).symlink_to((ixi / part / subject).resolve())
    return target


def checkpoint_layout(pretrained: Path) -> Tuple[int, str]:
    """Starting filters and decoder layout name of a FOMO checkpoint, so that the plans fit it."""
    from nnunet_ext.networks.unet import DECODER_LAYOUTS
    from nnunet_ext.pretrained import load_fomo_state_dict
    from nnunet_ext.pretrained.fomo_layout import detect_layout
    layout = detect_layout(load_fomo_state_dict(pretrained)[0])
    if layout is None:
        raise FomoInputError("not a FOMO UNet checkpoint (no known layout)", pretrained)
    names = {convs: name for name, convs in DECODER_LAYOUTS.items()}
    return layout.starting_filters, names[layout.decoder_convs]


def whole_head_patch(dataset: Path, spacing: Sequence[float]) -> Tuple[int, int, int]:
    """The smallest patch (multiples of 16, nnU-Net's array axis order) holding the largest converted image whole
    at ``spacing``.

    The head's pooled features are standardised with statistics of the training patches and read on whole
    volumes at validation and prediction: patches covering the whole (full-head) image keep the two alike, where
    a brain-sized crop would shift every pooled feature by more than its spread between subjects.
    """
    import SimpleITK as sitk
    largest = np.zeros(3)
    for image in sorted((dataset / "imagesTr").glob("*_0000.nii.gz")):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(image))
        reader.ReadImageInformation()  # the header only
        # SimpleITK sizes are (x, y, z); nnU-Net's arrays (z, y, x)
        extent_mm = np.array(reader.GetSize()[::-1]) * np.array(reader.GetSpacing()[::-1])
        largest = np.maximum(largest, extent_mm)
    voxels = np.ceil(largest / np.asarray(spacing) - SHAPE_TOLERANCE_VOXELS)
    return tuple(int(max(MIN_PATCH_EDGE, np.ceil(v / PATCH_MULTIPLE) * PATCH_MULTIPLE)) for v in voxels)


def convert_and_plan(settings: BenchmarkSettings) -> str:
    """``fomo_convert`` (5 folds, no test split) and ``fomo_plan_and_preprocess``; returns the dataset name."""
    from nnunet_ext.dataset_conversion.convert import convert_fomo_dataset
    from nnunet_ext.preprocessing.plan_and_preprocess import fomo_plan_and_preprocess
    from nnunet_ext.preprocessing.planner import FomoPlanSettings

    source = settings.ixi  # checked by check_inputs
    if settings.subjects is not None:
        source = subset_folder(settings.ixi, settings.subjects, settings.out)
    dataset = convert_fomo_dataset(FOMO_TASK, source, DATASET_ID, test_fraction=0.0, seed=settings.seed,
                                   n_folds=N_FOLDS)
    spacing = tuple(settings.spacing) * (3 if len(settings.spacing) == 1 else 1)
    patch = settings.patch_size or whole_head_patch(dataset, spacing)
    plan = FomoPlanSettings(spacing=spacing, patch_size=patch, starting_filters=settings.starting_filters,
                            pretrained=settings.pretrained, head_pool_levels=settings.head_pool_levels)
    if settings.head_pooling is not None:
        plan = replace(plan, head_pooling=settings.head_pooling)
    if settings.pretrained is not None:
        filters, decoder = checkpoint_layout(settings.pretrained)
        plan = replace(plan, starting_filters=filters, decoder_layout=decoder)
    fomo_plan_and_preprocess(DATASET_ID, plan, num_processes=1)
    return dataset.name


# -- training -----------------------------------------------------------------------------------------------


def build_trainer(trainer: Union[str, type], fold: Union[int, str], device: str, dataset_id: int = DATASET_ID):
    """An nnU-Net trainer for one fold, as ``nnUNetv2_train`` builds it (``get_trainer_from_args``).

    A class (the recipe search's ad-hoc variants) is built the same way without nnU-Net's lookup by name.
    """
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    if isinstance(trainer, str):
        return get_trainer_from_args(str(dataset_id), CONFIGURATION, fold, trainer, device=torch.device(device))
    folder = Path(nnUNet_preprocessed) / convert_id_to_dataset_name(dataset_id)
    plans = {**load_json(str(folder / "nnUNetPlans.json")), "continue_training": False}
    return trainer(plans=plans, configuration=CONFIGURATION, fold=fold,
                   dataset_json=load_json(str(folder / "dataset.json")), device=torch.device(device))


def train_fold(trainer: Union[str, type], fold: Union[int, str], schedule: Schedule, device: str = "cpu",
               dataset_id: int = DATASET_ID) -> Tuple[Path, float]:
    """Train one fold for ``schedule`` and run its final validation (the out-of-fold predictions).

    The out-of-fold predictions come from the last epoch's weights, never from ``checkpoint_best.pth``: the best
    epoch is chosen on these same validation cases, so its error would be optimistic. Returns the fold folder and
    the minutes it took.
    """
    started = time.monotonic()
    # Augmentation in the main process: worker processes gain nothing on a couple of cores. Training only:
    # during planning nnU-Net would derive torch.set_num_threads(0) from it.
    os.environ["nnUNet_n_proc_DA"] = "0"
    try:
        nnunet_trainer = build_trainer(trainer, fold, device, dataset_id)
        nnunet_trainer.num_epochs = schedule.epochs
        nnunet_trainer.num_iterations_per_epoch = schedule.iterations
        nnunet_trainer.early_stopping_patience = None
        if schedule.learning_rate is not None:
            nnunet_trainer.initial_lr = schedule.learning_rate
        if schedule.budget_s is not None:
            TimeBudget(nnunet_trainer, schedule.budget_s, started)
        nnunet_trainer.run_training()
        nnunet_trainer.perform_actual_validation()
    finally:
        del os.environ["nnUNet_n_proc_DA"]
    return Path(nnunet_trainer.output_folder), (time.monotonic() - started) / 60


# -- baselines ----------------------------------------------------------------------------------------------


def read_splits(dataset_name: str) -> List[Dict[str, List[str]]]:
    import json
    from nnunetv2.paths import nnUNet_raw
    return json.loads((Path(nnUNet_raw) / dataset_name / "splits_final.json").read_text())


def read_targets(dataset_name: str) -> Dict[str, float]:
    import json
    from nnunet_ext.dataset_conversion.tasks import FOMO_KEY
    from nnunetv2.paths import nnUNet_raw
    meta = json.loads((Path(nnUNet_raw) / dataset_name / "dataset.json").read_text())
    return {case: float(age) for case, age in meta[FOMO_KEY]["targets"].items()}


def block_mean(volume: np.ndarray, block: int) -> np.ndarray:
    """``volume`` averaged over non-overlapping ``block``^3 voxel blocks (trailing partial blocks dropped)."""
    shape = [s // block for s in volume.shape]
    trimmed = volume[tuple(slice(0, s * block) for s in shape)]
    return trimmed.reshape(shape[0], block, shape[1], block, shape[2], block).mean(axis=(1, 3, 5))


def voxel_features(dataset_name: str, cases: Sequence[str], block: int = RIDGE_BLOCK) -> np.ndarray:
    """One row per case: the converted (RAS) T1 z-scored per volume (the scanner's scale is arbitrary),
    block-averaged and cropped to the shape common to all cases."""
    import SimpleITK as sitk
    from nnunetv2.paths import nnUNet_raw
    volumes = []
    for case in cases:
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(nnUNet_raw) / dataset_name / "imagesTr"
                                                          / f"{case}_0000.nii.gz"))).astype(np.float32)
        image = (image - image.mean()) / max(float(image.std()), np.finfo(np.float32).eps)
        volumes.append(block_mean(image, block))
    common = np.min([v.shape for v in volumes], axis=0)
    return np.stack([v[tuple(slice(0, s) for s in common)].ravel() for v in volumes])


def baseline_predictions(dataset_name: str, splits: Sequence[Mapping[str, Sequence[str]]],
                         targets: Mapping[str, float], folds: Sequence[int]) -> Dict[str, Dict[str, Tuple[str, float, float]]]:
    """Out-of-fold predictions of the training mean and of ridge on voxels: model -> case -> (fold, true, pred)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cases = sorted(targets)
    features = dict(zip(cases, voxel_features(dataset_name, cases)))
    out: Dict[str, Dict[str, Tuple[str, float, float]]] = {MODEL_MEAN: {}, MODEL_RIDGE: {}}
    for fold in folds:
        train, val = splits[fold]["train"], splits[fold]["val"]
        y_train = np.array([targets[c] for c in train])
        ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
        ridge.fit(np.stack([features[c] for c in train]), y_train)
        ridge_pred = ridge.predict(np.stack([features[c] for c in val]))
        for case, pred in zip(val, ridge_pred):
            out[MODEL_RIDGE][case] = (str(fold), targets[case], float(pred))
            out[MODEL_MEAN][case] = (str(fold), targets[case], float(y_train.mean()))
    return out


# -- metrics and report -------------------------------------------------------------------------------------


def summarise(oof: Mapping[str, Tuple[str, float, float]], n_bootstrap: int, seed: int) -> Dict[str, Any]:
    """Pooled metrics with bootstrap CIs and per-fold metrics of out-of-fold predictions."""
    from sklearn.exceptions import UndefinedMetricWarning

    from nnunet_ext.dataset_conversion.tasks import REGRESSION
    from nnunet_ext.metrics import metrics_with_ci, regression_metrics
    truth = np.array([t for _, t, _ in oof.values()])
    pred = np.array([p for _, _, p in oof.values()])
    pooled = metrics_with_ci(REGRESSION, truth, pred, n_resamples=n_bootstrap, seed=seed)
    per_fold = {}
    for fold in sorted({f for f, _, _ in oof.values()}):
        pairs = np.array([(t, p) for f, t, p in oof.values() if f == fold])
        with warnings.catch_warnings():
            # a fold of 2-3 cases (--quick) or a constant baseline has no correlation: NaN, said once in the JSON
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            metrics = regression_metrics(pairs[:, 0], pairs[:, 1])
        per_fold[fold] = {name: metrics[name] for name in ("n", *REPORTED_METRICS)}
    return {"n_cases": int(truth.size), "pooled": {name: pooled[name] for name in REPORTED_METRICS},
            "per_fold": per_fold}


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Pooled out-of-fold metrics, one row per model: ``value [95% CI]``."""
    header = f"{'model':<16}" + "".join(f"{m:>24}" for m in REPORTED_METRICS)
    lines = [header, "-" * len(header)]
    for model, summary in results.items():
        cells = [f"{c['value']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}]" for c in
                 (summary["pooled"][m] for m in REPORTED_METRICS)]
        lines.append(f"{model:<16}" + "".join(f"{cell:>24}" for cell in cells))
    return "\n".join(lines)


def format_fold_table(summary: Mapping[str, Any]) -> str:
    lines = [f"{'fold':<6}{'n':>4}" + "".join(f"{m:>12}" for m in REPORTED_METRICS)]
    for fold, metrics in summary["per_fold"].items():
        lines.append(f"{fold:<6}{metrics['n']:>4}" + "".join(f"{metrics[m]:>12.2f}" for m in REPORTED_METRICS))
    return "\n".join(lines)


def write_figure(oof: Mapping[str, Tuple[str, float, float]], path: Path) -> Path:
    """Predicted vs true age (identity line) beside a Bland-Altman plot, in one PNG (each also on its own)."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    from nnunet_ext.evaluation.plots import plot_bland_altman, plot_predicted_vs_true
    truth = np.array([t for _, t, _ in oof.values()])
    pred = np.array([p for _, _, p in oof.values()])
    scatter = plot_predicted_vs_true(truth, pred, path.with_name(f"{path.stem}_predicted_vs_true.png"))
    bland = plot_bland_altman(truth, pred, path.with_name(f"{path.stem}_bland_altman.png"))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, panel in zip(axes, (scatter, bland)):
        ax.imshow(plt.imread(panel))
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def predict_command(dataset_name: str, trainer: str, folds: Sequence[int]) -> str:
    return (f"fomo_predict -i NEW_SUBJECTS_FOMO_LAYOUT -o PREDICTIONS -d {dataset_name} -tr {trainer} "
            f"-f {' '.join(map(str, folds))} -device cpu")


# -- the benchmark ------------------------------------------------------------------------------------------


def run_benchmark(settings: BenchmarkSettings) -> Dict[str, Any]:
    """Convert, plan, train every fold, score against the baselines; write JSON and the figure."""
    started = time.monotonic()
    check_inputs(settings)
    prepare_output(settings.out)
    configure_environment(settings.out)
    from nnunet_ext.evaluation.report import json_safe
    from nnunet_ext.evaluation.model_selection import read_out_of_fold
    from nnunet_ext.utils.files import atomic_write_json

    dataset_name = convert_and_plan(settings)
    prep_minutes = (time.monotonic() - started) / 60
    fold_minutes = {}
    model_folder = None
    for index, fold in enumerate(settings.folds):
        schedule = settings.schedule
        if settings.budget_minutes is not None:  # what is left, shared by the folds still to train
            left_s = settings.budget_minutes * 60 - (time.monotonic() - started) - REPORT_RESERVE_S
            schedule = replace(schedule, budget_s=max(0.0, left_s / (len(settings.folds) - index)))
        print(f"\n=== fold {fold}: {settings.trainer}, {schedule}", flush=True)
        fold_folder, fold_minutes[str(fold)] = train_fold(settings.trainer, fold, schedule, settings.device)
        model_folder = fold_folder.parent
    oof = read_out_of_fold(model_folder, [str(f) for f in settings.folds])
    splits, targets = read_splits(dataset_name), read_targets(dataset_name)
    models = {MODEL_CNN: oof, **baseline_predictions(dataset_name, splits, targets, settings.folds)}
    results = {name: summarise(cases, settings.n_bootstrap, settings.seed) for name, cases in models.items()}
    figure = write_figure(oof, settings.out / f"{RESULT_STEM}.png")
    total_minutes = (time.monotonic() - started) / 60
    report = {
        "dataset": dataset_name, "trainer": settings.trainer, "model_folder": str(model_folder),
        "settings": {"ixi": str(settings.ixi), "spacing_mm": list(settings.spacing),
                     "starting_filters": settings.starting_filters, "patch_size": settings.patch_size,
                     "pretrained": None if settings.pretrained is None else str(settings.pretrained),
                     "epochs": settings.schedule.epochs, "budget_minutes": settings.budget_minutes,
                     "iterations_per_epoch": settings.schedule.iterations if settings.budget_minutes is None
                     else "sized by the budget (see each fold's training log)",
                     "learning_rate": settings.schedule.learning_rate, "folds": list(settings.folds),
                     "subjects": settings.subjects, "seed": settings.seed, "n_bootstrap": settings.n_bootstrap,
                     "device": settings.device, **settings.extra},
        "minutes": {"convert_and_plan": prep_minutes, "folds": fold_minutes, "total": total_minutes},
        "results": results,
        "predictions": {name: {case: {"fold": f, "true": t, "predicted": p} for case, (f, t, p) in cases.items()}
                        for name, cases in models.items()},
        "figure": str(figure),
        "predict_command": predict_command(dataset_name, settings.trainer, settings.folds),
    }
    atomic_write_json(settings.out / f"{RESULT_STEM}.json", json_safe(report))
    print(f"\nPooled out-of-fold metrics, {results[MODEL_CNN]['n_cases']} cases, bootstrap 95% CIs "
          f"({settings.n_bootstrap} resamples); ages in years:\n{format_table(results)}")
    print(f"\nPer fold ({MODEL_CNN}):\n{format_fold_table(results[MODEL_CNN])}")
    print(f"\n{total_minutes:.1f} min in all ({prep_minutes:.1f} conversion and planning). Wrote "
          f"{settings.out / (RESULT_STEM + '.json')} and {figure}.\nEnsemble of the folds on new subjects "
          f"(FOMO layout, T1 only; with nnUNet_results={settings.out / 'nnUNet_results'}):\n  "
          f"{report['predict_command']}")
    return report


def add_head_arguments(parser: argparse.ArgumentParser, levels: Optional[Tuple[int, ...]] = None,
                       pooling: Optional[str] = None) -> None:
    """``--head-pool-levels`` and ``--head-pooling``, passed to the plans as ``fomo_plan_and_preprocess`` takes them
    (defaults None: the plans' own, the bottleneck's average)."""
    from nnunet_ext.networks.heads import POOLINGS

    parser.add_argument("--head-pool-levels", type=int, nargs="+", metavar="LEVEL", default=levels,
                        help="encoder levels the regression head pools (default: %(default)s; None: the bottleneck)")
    parser.add_argument("--head-pooling", choices=POOLINGS, default=pooling,
                        help="global pooling of each pooled level (default: %(default)s; None: avg)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ixi", type=Path, default=DEFAULT_IXI,
                        help=f"IXI copy in the FOMO Task 3 layout (default: {DEFAULT_IXI})")
    parser.add_argument("--out", type=Path, default=Path("ixi_benchmark_output"),
                        help="output folder (nnU-Net's folders, JSON, figure); a previous output of this benchmark "
                             "there is replaced, any other non-empty folder refused (default: %(default)s)")
    parser.add_argument("--spacing", type=float, nargs="+", metavar="MM",
                        help=f"planning spacing in mm, one value or X Y Z (default: {DEFAULT_SPACING_MM} on a CPU; "
                             "use 1 on a GPU, the pretraining's)")
    parser.add_argument("--patch-size", type=int, nargs=3, metavar=("X", "Y", "Z"),
                        help="training patch (multiples of 16); default: the smallest holding the whole image "
                             "(128 x 128 x 96 at 2 mm, 64 x 64 x 48 at 4 mm for IXI)")
    parser.add_argument("--starting-filters", type=int,
                        help=f"network width (default: {DEFAULT_STARTING_FILTERS} from scratch; the checkpoint's "
                             "with --pretrained)")
    parser.add_argument("--pretrained", type=Path, metavar="CKPT",
                        help=f"start every fold from this FOMO checkpoint ({PRETRAINED_TRAINER}); default: from "
                             f"scratch ({SCRATCH_TRAINER})")
    parser.add_argument("--budget-minutes", type=float, default=CPU_BUDGET_MINUTES,
                        help="wall-clock budget of the whole run (conversion, planning, every fold, baselines): the "
                             "folds share what planning leaves, and each fold's first epoch times the machine to size "
                             "the steps of the others (default: %(default)s minutes, the stated CPU budget on 2 cores)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help="epochs per fold, each ending with a whole-case validation (default: %(default)s)")
    parser.add_argument("--iterations", type=int,
                        help="training steps (batch 2) per epoch: a fixed schedule instead of --budget-minutes")
    parser.add_argument("--lr", type=float,
                        help="peak learning rate (default: the trainer's recipe)")
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(N_FOLDS)), choices=range(N_FOLDS),
                        help="folds to train (the pooled metrics use these folds' validation cases)")
    add_head_arguments(parser)
    parser.add_argument("--subjects", type=int, help="use only the first N subjects (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and the bootstrap (default: 0)")
    parser.add_argument("--n-bootstrap", type=int, default=DEFAULT_BOOTSTRAP,
                        help="bootstrap resamples per confidence interval (default: %(default)s)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="training device (default: cpu)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run of about 1.5 minutes: {QUICK_SUBJECTS} subjects at {QUICK_SPACING_MM} mm, "
                             f"{QUICK_EPOCHS} epochs of a few steps per fold; its numbers mean nothing")
    return parser


def head_pool_levels(args: argparse.Namespace) -> Optional[Tuple[int, ...]]:
    return tuple(args.head_pool_levels) if args.head_pool_levels else None


def settings_from_args(args: argparse.Namespace) -> BenchmarkSettings:
    """The run's settings, ``--quick`` replacing size and length; bad values refused with a clear message."""
    if args.epochs < 2 or (args.iterations is not None and args.iterations < 1) or not args.budget_minutes > 0:
        raise FomoInputError(f"--epochs must be at least 2, --iterations and --budget-minutes positive; got "
                             f"{args.epochs}, {args.iterations}, {args.budget_minutes}")
    if args.spacing is not None and len(args.spacing) not in (1, 3):
        raise FomoInputError(f"--spacing takes one or three values, got {args.spacing}")
    if args.subjects is not None and args.subjects < N_FOLDS:
        raise FomoInputError(f"--subjects must be at least {N_FOLDS} for {N_FOLDS} folds, got {args.subjects}")
    if args.pretrained is not None and not args.pretrained.is_file():
        raise FomoInputError("no such checkpoint", args.pretrained)
    spacing = tuple(args.spacing) if args.spacing else (DEFAULT_SPACING_MM,)
    filters = args.starting_filters or (None if args.pretrained else DEFAULT_STARTING_FILTERS)
    budget = None if args.iterations is not None else args.budget_minutes
    schedule = Schedule(args.epochs, args.iterations or BUDGET_FIRST_EPOCH_ITERATIONS, args.lr)
    subjects = args.subjects
    n_bootstrap = args.n_bootstrap
    if args.quick:
        spacing, schedule = (QUICK_SPACING_MM,), Schedule(QUICK_EPOCHS, QUICK_ITERATIONS, args.lr)
        budget = QUICK_BUDGET_MINUTES
        subjects, n_bootstrap = min(subjects or QUICK_SUBJECTS, QUICK_SUBJECTS), QUICK_BOOTSTRAP
    return BenchmarkSettings(ixi=args.ixi.resolve(), out=args.out.resolve(), spacing=spacing,
                             starting_filters=filters, patch_size=tuple(args.patch_size) if args.patch_size else None,
                             pretrained=None if args.pretrained is None else args.pretrained.resolve(),
                             schedule=schedule, folds=tuple(args.folds), subjects=subjects, seed=args.seed,
                             n_bootstrap=n_bootstrap, device=args.device, budget_minutes=budget,
                             extra={"quick": args.quick}, head_pool_levels=head_pool_levels(args),
                             head_pooling=args.head_pooling)


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    run_benchmark(settings_from_args(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

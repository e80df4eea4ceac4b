"""FomoFinetuneTrainer through nnU-Net's own commands on the CPU: train, --val, --c, predict, pretrained weights."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint, run_training
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ext.env import EXT_TRAINER_VAR, TRAINER_LOOKUP_FOLDER
from nnunet_ext.errors import EXIT_BAD_INPUT, FomoInputError
from nnunet_ext.networks import FomoUNet
from nnunet_ext.preprocessing.fomo_plans import PretrainedSpec
from nnunet_ext.pretrained import sha256_of_file
from nnunet_ext.pretrained.testing import make_fomo_checkpoint
from nnunet_ext.trainers import FomoFinetuneTrainer
from nnunet_ext.trainers.base import FINETUNE_NUM_EPOCHS
from nnunet_ext.trainers.pretrained_loading import (
    PRETRAINED_ENV_VAR,
    TRANSFER_REPORT_FILENAME,
    PretrainedSource,
    load_pretrained,
    resolve_pretrained_source,
)
from case_level_datasets import shortened
from fresh_process import run_fresh
from learning import Fit, fit_whole_cases, seed_everything
from trainer_datasets import (
    CONFIGURATION,
    DATASET_ID,
    DATASET_NAME,
    STARTING_FILTERS,
    TRAINING_ENV,
    PlannedDataset,
    planned_segmentation_dataset,
    use_dataset,
)

DEBUG_TRAINER = "FomoFinetuneTrainer_debug"
FOLD = 0
CPU = torch.device("cpu")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> PlannedDataset:
    return planned_segmentation_dataset(tmp_path_factory)


@pytest.fixture
def nnunet_env(dataset: PlannedDataset, monkeypatch: pytest.MonkeyPatch) -> PlannedDataset:
    """This process set up as after ``eval "$(fomo_env)"``, on the test dataset."""
    use_dataset(monkeypatch, dataset)
    monkeypatch.setenv(EXT_TRAINER_VAR, str(TRAINER_LOOKUP_FOLDER))
    return dataset


def _subprocess_env(dataset: PlannedDataset) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != PRETRAINED_ENV_VAR}
    return {**env, **dataset.env, **TRAINING_ENV, EXT_TRAINER_VAR: str(TRAINER_LOOKUP_FOLDER)}


def _run(command: list[str], dataset: PlannedDataset, results: Path | None = None) -> None:
    env = _subprocess_env(dataset) if results is None else {**_subprocess_env(dataset), "nnUNet_results": str(results)}
    done = run_fresh(command, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _fold_folder(dataset: PlannedDataset, trainer: str, results: Path | None = None) -> Path:
    results = Path(dataset.env["nnUNet_results"]) if results is None else results
    return results / DATASET_NAME / f"{trainer}__nnUNetPlans__{CONFIGURATION}" / f"fold_{FOLD}"


@pytest.fixture(scope="module")
def trained(dataset: PlannedDataset) -> Path:
    """``nnUNetv2_train`` of the ``_debug`` variant (2 epochs x 4 iterations, then nnU-Net's validation)."""
    _run([str(BIN / "nnUNetv2_train"), str(DATASET_ID), CONFIGURATION, str(FOLD), "-tr", DEBUG_TRAINER,
          "-device", "cpu"], dataset)
    return _fold_folder(dataset, DEBUG_TRAINER)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)  # nnU-Net's own files


def _report(fold: Path) -> dict:
    return json.loads((fold / TRANSFER_REPORT_FILENAME).read_text())


def test_nnunet_train_writes_checkpoints_transfer_report_and_validation(trained: Path, dataset: PlannedDataset):
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", TRANSFER_REPORT_FILENAME, "progress.png"):
        assert (trained / name).is_file(), name
    assert not (trained / "checkpoint_latest.pth").exists()
    final = _load(trained / "checkpoint_final.pth")
    assert final["trainer_name"] == DEBUG_TRAINER and final["current_epoch"] == 2
    assert _load(trained / "checkpoint_best.pth")["current_epoch"] in (1, 2)
    dice = json.loads((trained / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"]
    assert math.isfinite(dice) and 0.0 <= dice <= 1.0


def test_transfer_report_proves_encoder_and_decoder_came_from_the_planned_checkpoint(trained: Path,
                                                                                      dataset: PlannedDataset):
    report = _report(trained)
    assert report["complete"] and report["transferred"] == report["transferable"] > 0
    assert report["sha256"] == sha256_of_file(dataset.checkpoint) == dataset.plans["configurations"][
        CONFIGURATION]["fomo"]["pretrained"]["sha256"]
    assert Path(report["checkpoint"]) == dataset.checkpoint.resolve()
    transferred_targets = [e["target"] for e in report["entries"] if e["status"] in ("loaded", "adapted")]
    assert any(t.startswith("encoder.") for t in transferred_targets)
    assert any(t.startswith("decoder.") for t in transferred_targets)
    log = "".join(p.read_text() for p in trained.glob("training_log_*.txt"))
    assert f"transferred {report['transferred']}/{report['transferable']}" in log


@pytest.mark.real_spawn  # nnU-Net's preprocessing workers must find our normalisation by themselves
def test_nnunet_predict_uses_our_trainer(trained: Path, dataset: PlannedDataset, learned, tmp_path: Path):
    """nnUNetv2_predict with our trainer class and the fitted weights (a copy of the trained fold whose
    checkpoint holds them) segments a fitted case: an all-zero or misplaced mask fails."""
    fit, trainer = learned
    case = fit.batch["keys"][0]
    results = tmp_path / "results"
    shutil.copytree(Path(dataset.env["nnUNet_results"]), results)
    checkpoint_file = _fold_folder(dataset, DEBUG_TRAINER, results) / "checkpoint_final.pth"
    checkpoint = _load(checkpoint_file)
    checkpoint["network_weights"] = trainer.network.state_dict()
    torch.save(checkpoint, checkpoint_file)
    (tmp_path / "in").mkdir()
    for image in (dataset.raw / "imagesTr").glob(f"{case}_*.nii.gz"):
        shutil.copy(image, tmp_path / "in" / image.name)
    _run([str(BIN / "nnUNetv2_predict"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
          "-d", str(DATASET_ID), "-c", CONFIGURATION, "-f", str(FOLD), "-tr", DEBUG_TRAINER, "-device", "cpu",
          "-npp", "1", "-nps", "1", "--disable_progress_bar"], dataset, results=results)
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz")))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset.raw / "labelsTr" / f"{case}.nii.gz")))
    assert predicted.shape == reference.shape
    assert set(np.unique(predicted)) <= {0, 1}
    assert dice(predicted > 0, reference > 0) > LEARNED_DICE


def test_val_rerun_rewrites_the_validation_without_reloading_pretrained(trained: Path, nnunet_env: PlannedDataset):
    summary = trained / "validation" / "summary.json"
    summary.unlink()
    report_before = (trained / TRANSFER_REPORT_FILENAME).read_bytes()
    run_training(str(DATASET_ID), CONFIGURATION, FOLD, DEBUG_TRAINER, only_run_validation=True, device=CPU)
    assert math.isfinite(json.loads(summary.read_text())["foreground_mean"]["Dice"])
    assert (trained / TRANSFER_REPORT_FILENAME).read_bytes() == report_before


def _interrupt_after_first_epoch(fold: Path) -> None:
    """Leave the fold as a run killed after epoch 0 would: only checkpoint_latest.pth, one epoch logged."""
    checkpoint = _load(fold / "checkpoint_final.pth")
    checkpoint["current_epoch"] = 1
    checkpoint["logging"] = {key: values[:1] for key, values in checkpoint["logging"].items()}
    torch.save(checkpoint, fold / "checkpoint_latest.pth")
    (fold / "checkpoint_final.pth").unlink()


def test_resume_never_reloads_pretrained_weights(trained: Path, nnunet_env: PlannedDataset, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch):
    results = tmp_path / "results"
    shutil.copytree(Path(nnunet_env.env["nnUNet_results"]), results)
    monkeypatch.setenv("nnUNet_results", str(results))
    fold = _fold_folder(nnunet_env, DEBUG_TRAINER, results)
    _interrupt_after_first_epoch(fold)
    report_before = (fold / TRANSFER_REPORT_FILENAME).read_bytes()
    # Any attempt to load pretrained weights now fails loudly.
    monkeypatch.setenv(PRETRAINED_ENV_VAR, str(tmp_path / "missing.ckpt"))

    trainer = get_trainer_from_args(str(DATASET_ID), CONFIGURATION, FOLD, DEBUG_TRAINER, continue_training=True,
                                    device=CPU)
    maybe_load_checkpoint(trainer, continue_training=True, validation_only=False)
    resumed_weights = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    trainer.run_training()

    assert trainer.current_epoch == 2 and len(trainer.logger.get_value("train_losses", step=None)) == 2
    assert (fold / TRANSFER_REPORT_FILENAME).read_bytes() == report_before
    final = _load(fold / "checkpoint_final.pth")["network_weights"]
    assert any(not torch.equal(final[k], resumed_weights[k]) for k in final), "epoch 1 was not trained"

    # the same settings without a checkpoint to resume do load pretrained weights: refused before the fold exists
    with pytest.raises(FomoInputError, match="does not exist"):
        get_trainer_from_args(str(DATASET_ID), CONFIGURATION, FOLD + 1, DEBUG_TRAINER, device=CPU)
    assert not (fold.parent / f"fold_{FOLD + 1}").exists()


def test_val_rerun_needs_no_pretrained_checkpoint(trained: Path, nnunet_env: PlannedDataset, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(PRETRAINED_ENV_VAR, str(tmp_path / "missing.ckpt"))
    monkeypatch.setattr(sys, "argv", ["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, str(FOLD), "-tr",
                                      DEBUG_TRAINER, "--val"])
    trainer = get_trainer_from_args(str(DATASET_ID), CONFIGURATION, FOLD, DEBUG_TRAINER, device=CPU)
    assert trainer.output_folder == str(trained)


def test_nnunet_train_refuses_a_checkpoint_that_does_not_fit_in_one_line_before_creating_the_fold(
        dataset: PlannedDataset, tmp_path: Path):
    wide = make_fomo_checkpoint(tmp_path / "wide.ckpt", starting_filters=2 * STARTING_FILTERS)
    results = tmp_path / "results"
    results.mkdir()
    env = {**_subprocess_env(dataset), "nnUNet_results": str(results), PRETRAINED_ENV_VAR: str(wide)}
    done = run_fresh([str(BIN / "nnUNetv2_train"), str(DATASET_ID), CONFIGURATION, str(FOLD), "-tr", DEBUG_TRAINER,
                      "-device", "cpu"], env=env)
    assert done.returncode == EXIT_BAD_INPUT, done.stderr[-3000:]
    # (torch may print a FutureWarning first)
    assert (f"\nerror: {wide}: checkpoint named by the ${PRETRAINED_ENV_VAR}: refusing the checkpoint: the "
            f"checkpoint has starting filters {2 * STARTING_FILTERS}"
            in "\n" + done.stderr) and "Traceback" not in done.stderr, done.stderr
    assert list(results.iterdir()) == []


@pytest.mark.parametrize("patch", [[40, 32, 32], [16, 16, 16]], ids=["not divisible", "too small"])
def test_plans_with_a_patch_the_network_cannot_train_on_are_refused_before_the_fold_exists(
        nnunet_env: PlannedDataset, patch: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    plans = nnunet_env.plans
    plans["configurations"][CONFIGURATION]["patch_size"] = patch
    plans_file = Path(nnunet_env.env["nnUNet_preprocessed"]) / DATASET_NAME / "nnUNetPlans.json"
    with pytest.raises(FomoInputError, match=rf"^{plans_file}: configuration '{CONFIGURATION}': patch_size "
                                             rf"\[{patch[0]}, {patch[1]}, {patch[2]}\] must be 3 multiples of 16"):
        _trainer(nnunet_env, plans)
    # inside nnU-Net's command: one line and exit status 2, as our own commands
    monkeypatch.setattr(sys, "argv", [str(BIN / "nnUNetv2_train"), str(DATASET_ID), CONFIGURATION, "0"])
    with pytest.raises(SystemExit) as exit_info:
        _trainer(nnunet_env, plans)
    assert exit_info.value.code == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert error.startswith(f"error: {plans_file}: ") and error.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def _trainer(dataset: PlannedDataset, plans: dict | None = None) -> FomoFinetuneTrainer:
    plans = dataset.plans if plans is None else plans
    return FomoFinetuneTrainer({**plans, "continue_training": False}, CONFIGURATION, FOLD, dataset.dataset_json, CPU)


def test_nnunet_pretrained_weights_flag_is_refused_with_the_right_way(nnunet_env: PlannedDataset,
                                                                      monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setattr(sys, "argv", ["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, "0", "-tr",
                                      "FomoFinetuneTrainer", "-pretrained_weights", "epoch=12.ckpt"])
    with pytest.raises(SystemExit) as exit_info:  # inside nnUNetv2_train: reported as by our own commands
        _trainer(nnunet_env)
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert re.match(f"error: .*-pretrained_weights.*{PRETRAINED_ENV_VAR}", capsys.readouterr().err)


def test_trainer_refuses_plans_of_another_task(nnunet_env: PlannedDataset):
    plans = nnunet_env.plans
    plans["configurations"][CONFIGURATION]["fomo"]["task_type"] = "classification"
    with pytest.raises(FomoInputError, match="trains segmentation tasks"):
        _trainer(nnunet_env, plans)


def _network_like(dataset: PlannedDataset) -> FomoUNet:
    """What nnU-Net's predictor builds: the trainer class's static builder applied to the plans."""
    plans_manager = PlansManager(dataset.plans)
    return FomoFinetuneTrainer.build_network_architecture(
        plans_manager, plans_manager.get_configuration(CONFIGURATION), 2, 2, False)


def test_network_is_built_from_the_plans_alone(dataset: PlannedDataset):
    network = _network_like(dataset)
    assert isinstance(network, FomoUNet)
    assert network.starting_filters == STARTING_FILTERS and network.input_channels == 2
    assert network(torch.zeros(1, 2, 32, 32, 32)).shape == (1, 2, 32, 32, 32)


def test_default_recipe_is_adamw_with_warmup_cosine(nnunet_env: PlannedDataset):
    trainer = _trainer(nnunet_env)
    trainer.initialize()
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    group = trainer.optimizer.param_groups[0]
    assert group["initial_lr"] == 1e-4 and group["weight_decay"] == 3e-5
    assert not trainer.enable_deep_supervision and trainer.num_epochs == FINETUNE_NUM_EPOCHS
    trainer.lr_scheduler.step(trainer.num_epochs - 1)
    assert 0 < group["lr"] < 1e-4 * 0.01


def test_env_var_overrides_the_planned_checkpoint(dataset: PlannedDataset, monkeypatch: pytest.MonkeyPatch):
    planned = PretrainedSpec(str(dataset.checkpoint), "a" * 64, "unet_b", "unet_b_lw_dec", STARTING_FILTERS)
    monkeypatch.delenv(PRETRAINED_ENV_VAR, raising=False)
    assert resolve_pretrained_source(planned) == PretrainedSource(dataset.checkpoint, "plans", "a" * 64)
    monkeypatch.setenv(PRETRAINED_ENV_VAR, "/elsewhere/model.ckpt")
    assert resolve_pretrained_source(planned) == PretrainedSource(Path("/elsewhere/model.ckpt"),
                                                                  f"${PRETRAINED_ENV_VAR}")


def test_plans_without_checkpoint_are_refused_unless_named(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(PRETRAINED_ENV_VAR, raising=False)
    with pytest.raises(FomoInputError, match="_Scratch"):
        resolve_pretrained_source(None)


def test_checkpoint_changed_since_planning_is_refused(dataset: PlannedDataset, tmp_path: Path):
    network = _network_like(dataset)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    changed = make_fomo_checkpoint(tmp_path / "epoch=12.ckpt", starting_filters=STARTING_FILTERS, seed=1)
    with pytest.raises(FomoInputError, match="changed since planning"):
        load_pretrained(network, PretrainedSource(changed, "plans", sha256_of_file(dataset.checkpoint)), "first")
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    report = load_pretrained(network, PretrainedSource(changed, f"${PRETRAINED_ENV_VAR}"), "first")
    assert report.sha256 == sha256_of_file(changed) and report.complete


#: The learning check: 2 training cases fitted for a few dozen steps at a test-only learning rate (the test
#: checkpoint holds random weights, so this is training from scratch: 100x the fine-tuning rate).
LEARNING_STEPS, LEARNING_RATE, N_LEARNING_CASES = 30, 1e-2, 2
LEARNED_DICE = 0.5


def dice(mask: np.ndarray, reference: np.ndarray) -> float:
    return 2 * np.logical_and(mask, reference).sum() / (mask.sum() + reference.sum())


@pytest.fixture(scope="module")
def learned(dataset: PlannedDataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[Fit, FomoFinetuneTrainer]:
    """A handful of cases fitted by the trainer's own ``train_step`` (see ``learning.fit_whole_cases``)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_dataset(monkeypatch, dataset)
        monkeypatch.setenv("nnUNet_results", str(tmp_path_factory.mktemp("learning")))
        seed_everything()
        trainer = shortened(FomoFinetuneTrainer, 1, LEARNING_STEPS, LEARNING_RATE)(
            {**dataset.plans, "continue_training": False}, CONFIGURATION, FOLD, dataset.dataset_json, CPU)
        return fit_whole_cases(trainer, N_LEARNING_CASES, LEARNING_STEPS), trainer


def test_fine_tuning_fits_a_handful_of_cases(learned: tuple[Fit, FomoFinetuneTrainer]):
    fit, _ = learned
    # nnU-Net's Dice + CE loss: CE minus the soft Dice, ~0.7 untrained
    assert fit.loss_fell_by_half(), fit.losses
    reference = fit.batch["target"][:, 0].numpy() > 0
    predicted = fit.outputs.argmax(1).numpy() > 0
    chance = dice(np.ones_like(reference), reference)  # everything foreground
    assert chance < 0.2 and dice(predicted, reference) > LEARNED_DICE

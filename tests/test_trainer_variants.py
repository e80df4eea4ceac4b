"""Strategy and length variants: every trainer family gets the same set, each changes only its one concern."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

import nnunet_ext.trainers as trainers
from nnunet_ext.env import EXT_TRAINER_VAR, TRAINER_LOOKUP_FOLDER
from nnunet_ext.trainers import TRAINER_FAMILIES, TRAINERS, FomoFinetuneTrainer
from nnunet_ext.trainers.base import FomoTrainerBase
from nnunet_ext.trainers.pretrained_loading import TRANSFER_REPORT_FILENAME
from nnunet_ext.trainers.variants import (
    DEBUG_EPOCHS,
    DEBUG_ITERATIONS,
    DEBUG_VAL_ITERATIONS,
    DEMO_SCHEDULES,
    LAYER_LR_DECAY,
    SHORT_SCHEDULE_EPOCHS,
)
from trainer_datasets import CONFIGURATION, PATCH, PlannedDataset, planned_segmentation_dataset, use_dataset

CPU = torch.device("cpu")
CHANNELS = 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> PlannedDataset:
    return planned_segmentation_dataset(tmp_path_factory)


@pytest.fixture
def results(dataset: PlannedDataset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The planned dataset, with this test's own nnUNet_results."""
    use_dataset(monkeypatch, dataset)
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    return tmp_path


def _trainer(cls: type[FomoTrainerBase], dataset: PlannedDataset, initialize: bool = True) -> FomoTrainerBase:
    trainer = cls({**dataset.plans, "continue_training": False}, CONFIGURATION, 0, dataset.dataset_json, CPU)
    if initialize:
        trainer.initialize()
    return trainer


def _variant(name: str) -> type[FomoTrainerBase]:
    return TRAINERS[f"FomoFinetuneTrainer_{name}"]


def _parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if not torch.equal(before[name], p)}


def _train_one_step(trainer: FomoTrainerBase) -> None:
    """One optimiser step of the epoch ``trainer.current_epoch`` on a random batch."""
    generator = torch.Generator().manual_seed(0)
    batch = {"data": torch.randn(2, CHANNELS, PATCH, PATCH, PATCH, generator=generator),
             "target": torch.randint(0, 2, (2, 1, PATCH, PATCH, PATCH), generator=generator).float()}
    trainer.on_train_epoch_start()
    trainer.train_step(batch)


def test_every_family_gets_the_same_variants_exported_by_name():
    def generated_suffixes(family: type) -> set[str]:
        """Suffixes of the trainers made as (variant mixin, family)."""
        return {name.removeprefix(family.__name__ + "_") for name, cls in TRAINERS.items()
                if cls.__bases__[1:] == (family,)}

    expected = {"debug", "debugScratch", "cpuDemo", "cpuDemoScratch", "FrozenEncoder", "LLRD", "Scratch",
                "FrozenEncoderUnfreeze10", "FrozenEncoderUnfreeze50", *(f"{n}epochs" for n in SHORT_SCHEDULE_EPOCHS)}
    for family in TRAINER_FAMILIES:
        assert generated_suffixes(family) == expected, family.__name__
    for name, cls in TRAINERS.items():
        assert cls.__name__ == name and getattr(trainers, name) is cls


def test_nnunet_finds_variants_through_the_lookup_folder(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(EXT_TRAINER_VAR, str(TRAINER_LOOKUP_FOLDER))
    assert recursive_find_trainer_class_by_name("FomoFinetuneTrainer_LLRD") is _variant("LLRD")
    assert recursive_find_trainer_class_by_name("FomoRegressionTrainer_debug") is TRAINERS["FomoRegressionTrainer_debug"]
    with pytest.raises(RuntimeError, match="Could not find"):
        recursive_find_trainer_class_by_name("FomoFinetuneTrainer_7epochs")


def test_length_variants_change_only_the_schedule_length(results: Path, dataset: PlannedDataset):
    default = _trainer(FomoFinetuneTrainer, dataset, initialize=False)
    short = _trainer(_variant("5epochs"), dataset, initialize=False)
    debug = _trainer(_variant("debug"), dataset, initialize=False)
    demo = _trainer(_variant("cpuDemo"), dataset, initialize=False)
    assert short.num_epochs == 5 and default.num_epochs != 5
    assert short.num_iterations_per_epoch == default.num_iterations_per_epoch
    assert short.early_stopping_patience == default.early_stopping_patience is not None
    assert (debug.num_epochs, debug.num_iterations_per_epoch, debug.num_val_iterations_per_epoch) == (
        DEBUG_EPOCHS, DEBUG_ITERATIONS, DEBUG_VAL_ITERATIONS)
    schedule = DEMO_SCHEDULES["segmentation"]
    assert (demo.num_epochs, demo.num_iterations_per_epoch, demo.num_val_iterations_per_epoch, demo.initial_lr) == (
        schedule.epochs, schedule.iterations, schedule.val_iterations, schedule.learning_rate)
    assert debug.early_stopping_patience is None and demo.early_stopping_patience is None
    assert short.initial_lr == debug.initial_lr == default.initial_lr
    # the demo's checkpoint holds random weights: it trains at a from-scratch rate
    assert demo.initial_lr > default.initial_lr


def test_frozen_encoder_keeps_pretrained_encoder_and_trains_the_decoder(results: Path, dataset: PlannedDataset):
    trainer = _trainer(_variant("FrozenEncoder"), dataset)
    network = trainer.network
    before = _parameters(network)
    _train_one_step(trainer)
    changed = _changed(before, network)
    assert changed and all(name.startswith("decoder.") for name in changed)


def test_unfreeze_variant_trains_the_encoder_from_epoch_n(results: Path, dataset: PlannedDataset):
    trainer = _trainer(_variant("FrozenEncoderUnfreeze10"), dataset)
    trainer.current_epoch = 9
    _train_one_step(trainer)
    assert not any(p.requires_grad for p in trainer.network.encoder.parameters())
    trainer.current_epoch = 10
    before = _parameters(trainer.network)
    _train_one_step(trainer)
    assert any(name.startswith("encoder.") for name in _changed(before, trainer.network))


def test_llrd_gives_earlier_encoder_levels_lower_learning_rates(results: Path, dataset: PlannedDataset):
    trainer = _trainer(_variant("LLRD"), dataset)
    groups = trainer.optimizer.param_groups
    levels = len(trainer.network.encoder.stages)
    expected = [trainer.initial_lr * LAYER_LR_DECAY ** (levels - level) for level in range(levels)]
    assert [g["initial_lr"] for g in groups] == pytest.approx([*expected, trainer.initial_lr])
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in trainer.network.parameters())  # each exactly once
    # DNA's decoder also holds the encoder; its own layers train at the full rate
    decoder_own = {id(p) for name, p in trainer.network.decoder.named_parameters() if not name.startswith("encoder.")}
    assert decoder_own and decoder_own <= {id(p) for p in groups[-1]["params"]}
    default = _trainer(FomoFinetuneTrainer, dataset)
    assert len(default.optimizer.param_groups) == 1


def test_scratch_loads_no_weights_where_the_default_loads_them(results: Path, dataset: PlannedDataset):
    for cls, loads in ((_variant("Scratch"), False), (FomoFinetuneTrainer, True)):
        trainer = _trainer(cls, dataset)
        before = _parameters(trainer.network)
        trainer.on_train_start()
        assert bool(_changed(before, trainer.network)) is loads, cls.__name__
        assert (Path(trainer.output_folder) / TRANSFER_REPORT_FILENAME).is_file() is loads, cls.__name__


def test_deep_supervision_variant_trains_every_decoder_resolution(results: Path, dataset: PlannedDataset):
    trainer = _trainer(TRAINERS["FomoFinetuneTrainer_DeepSupervision_debug"], dataset, initialize=False)
    trainer.on_train_start()
    batch = next(trainer.dataloader_train)
    outputs = trainer.network(batch["data"])
    assert len(outputs) == len(batch["target"]) == trainer.network.n_stages - 1
    assert [o.shape[2:] for o in outputs] == [t.shape[2:] for t in batch["target"]]
    assert np.isfinite(trainer.train_step(batch)["loss"])
    assert torch.is_tensor(_trainer(FomoFinetuneTrainer, dataset).network(batch["data"]))  # default: one output


class _ConstantMetricTrainer(TRAINERS["FomoFinetuneTrainer_debug"]):
    """Logs a selection metric that never improves, so only the patience decides when training stops."""

    selection_metric: ClassVar[str] = "constant_metric"
    patience = 2

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = CPU):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 10
        self.num_iterations_per_epoch = self.num_val_iterations_per_epoch = 1
        self.early_stopping_patience = self.patience

    def on_validation_epoch_end(self, val_outputs: list[dict]) -> None:
        super().on_validation_epoch_end(val_outputs)
        self.logger.log(self.selection_metric, 1.0, self.current_epoch)


def test_early_stopping_ends_training_with_the_usual_checkpoints(results: Path, dataset: PlannedDataset):
    trainer = _trainer(_ConstantMetricTrainer, dataset, initialize=False)
    trainer.run_training()
    stopped_after = _ConstantMetricTrainer.patience + 1
    assert trainer.current_epoch == stopped_after
    fold = Path(trainer.output_folder)
    assert torch.load(fold / "checkpoint_final.pth", weights_only=False)["current_epoch"] == stopped_after
    assert torch.load(fold / "checkpoint_best.pth", weights_only=False)["current_epoch"] == 1  # epoch 0
    assert "Early stopping before epoch 3" in "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert json.loads((fold / TRANSFER_REPORT_FILENAME).read_text())["complete"]


def test_the_heads_start_from_a_probe_when_fine_tuning_only():
    """A pretrained run of a case-level family starts its head from a linear probe; the demo's variants (from-scratch
    rates) and the soft-label coding (no single output) keep their usual start."""
    for family in ("FomoClassificationTrainer", "FomoRegressionTrainer"):
        assert trainers.TRAINERS[family].head_from_linear_probe
        assert trainers.TRAINERS[f"{family}_FrozenEncoder"].head_from_linear_probe
        assert not trainers.TRAINERS[f"{family}_cpuDemo"].head_from_linear_probe
    assert not trainers.TRAINERS["FomoRegressionTrainer_SoftLabel"].head_from_linear_probe

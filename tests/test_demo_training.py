"""``fomo_demo``'s training step: the folds train side by side in worker processes, each with a log of its own,
the console gets one line, and a failing fold shows where its log is and how it ended."""

from __future__ import annotations

from pathlib import Path

import pytest
from case_level_datasets import planned_case_level_dataset

from nnunet_ext import demo

DEBUG_TRAINER = "FomoClassificationTrainer_debug"
N_CASES = 10


def settings_for(root: Path, folds) -> demo.DemoSettings:
    return demo.DemoSettings(out=root, tasks=(1,), folds=folds, cases=None, seed=0)


def test_folds_train_side_by_side_each_with_its_own_log(tmp_path, tmp_path_factory, monkeypatch, capfd):
    dataset = planned_case_level_dataset(tmp_path_factory, tmp_path, "classification", N_CASES, monkeypatch)
    console, log = demo.Console(tmp_path), tmp_path / "logs" / "training.log"
    demo.train_folds(console, dataset.dataset_id, DEBUG_TRAINER, settings_for(tmp_path, (0, 1)), "training", log)

    commands = [f"nnUNetv2_train {dataset.dataset_id} 3d_fullres {fold} -tr {DEBUG_TRAINER} -device cpu"
                for fold in (0, 1)]
    assert console.commands == commands
    for fold, command in zip((0, 1), commands):
        assert (dataset.fold_folder(DEBUG_TRAINER, fold) / "checkpoint_final.pth").is_file()
        fold_log = (tmp_path / "logs" / f"training_fold{fold}.log").read_text()
        assert fold_log.startswith(f"$ {command}\n") and "Epoch time" in fold_log
    assert "2 folds in 2 processes" in log.read_text()  # the step's log says where the folds' logs are
    console_lines = [line for line in capfd.readouterr().out.replace("\r", "\n").splitlines() if "log:" in line]
    assert len(console_lines) == 1 and console_lines[0].endswith("log: logs/training.log")


def test_a_failing_fold_names_its_log_and_shows_its_end(tmp_path, tmp_path_factory, monkeypatch, capfd):
    dataset = planned_case_level_dataset(tmp_path_factory, tmp_path, "classification", N_CASES, monkeypatch)
    console, log = demo.Console(tmp_path), tmp_path / "logs" / "training.log"
    with pytest.raises(demo.StepFailed):
        demo.train_folds(console, dataset.dataset_id, "NoSuchTrainer", settings_for(tmp_path, (0,)), "training", log)
    fold_log = tmp_path / "logs" / "training_fold0.log"
    shown = capfd.readouterr().out
    assert "training: FAILED" in shown and f"fold 0 failed; its log: {fold_log}" in shown
    assert "NoSuchTrainer" in fold_log.read_text() and "Traceback" in fold_log.read_text()

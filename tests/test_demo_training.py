"""``fomo_demo``'s training step: a failing fold shows where its log is and how it ended (the folds training side
by side, each with its own log, are checked by the tiny demo of ``test_demo_smoke.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from case_level_datasets import planned_case_level_dataset

from nnunet_ext import demo

DEBUG_TRAINER = "FomoClassificationTrainer_debug"
N_CASES = 10


def settings_for(root: Path, folds) -> demo.DemoSettings:
    return demo.DemoSettings(out=root, tasks=(1,), folds=folds, cases=None, seed=0)


def test_a_failing_fold_names_its_log_and_shows_its_end(tmp_path, tmp_path_factory, monkeypatch, capfd):
    dataset = planned_case_level_dataset(tmp_path_factory, tmp_path, "classification", N_CASES, monkeypatch)
    console, log = demo.Console(tmp_path), tmp_path / "logs" / "training.log"
    with pytest.raises(demo.StepFailed):
        demo.train_folds(console, dataset.dataset_id, "NoSuchTrainer", settings_for(tmp_path, (0,)), "training", log)
    fold_log = tmp_path / "logs" / "training_fold0.log"
    shown = capfd.readouterr().out
    assert "training: FAILED" in shown and f"fold 0 failed; its log: {fold_log}" in shown
    assert "NoSuchTrainer" in fold_log.read_text() and "Traceback" in fold_log.read_text()

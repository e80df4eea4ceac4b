"""``benchmarks/trainer_overhead.py --quick``: each of our trainers and the stock one timed on the same data and
network, and the ratio is theirs."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from fresh_process import run_fresh

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "benchmarks" / "trainer_overhead.py"
#: The segmentation trainer and one case-level trainer (classification shares regression's code path and costs
#: a third of the test's time).
OURS = {"segmentation": "FomoFinetuneTrainer", "regression": "FomoRegressionTrainer"}
PHASES = {"data", "forward_loss", "backward_step"}


def test_quick_run_times_every_trainer_against_the_stock_one(tmp_path: Path):
    done = run_fresh([sys.executable, str(BENCHMARK), "--quick", "--tasks", *OURS, "--out", str(tmp_path)],
                     cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "trainer_overhead.json").read_text())
    settings = report["settings"]
    assert set(report["tasks"]) == set(OURS)
    for task_type, task in report["tasks"].items():
        ours, stock = task["trainers"]["ours"], task["trainers"]["stock"]
        assert (ours["trainer"], stock["trainer"]) == (OURS[task_type], "nnUNetTrainer")
        for summary in (ours, stock):
            # every round of every trainer timed, each step split into its phases
            assert len(summary["steps_s"]) == len(summary["round_median_s"]) == settings["rounds"] == 2
            assert all(len(steps) == settings["steps"] and all(set(step) == PHASES and min(step.values()) >= 0
                                                               for step in steps) for steps in summary["steps_s"])
            assert summary["median_step_s"] == statistics.median(summary["round_median_s"]) > 0
            assert summary["network"]["class"] == "nnunet_ext.networks.unet.FomoUNet"
        # paired: each round's ratio of the two median steps, their median the figure
        ratios = [mine / theirs for mine, theirs in zip(ours["round_median_s"], stock["round_median_s"])]
        assert task["round_ratios"] == ratios and task["ratio"] == statistics.median(ratios) > 0
        # the same encoder on both sides; the stock trainer segments (a decoder), ours may end in a head
        assert ours["network"]["encoder_parameters"] == stock["network"]["encoder_parameters"]
        assert stock["network"]["task_type"] == "segmentation"
        assert ours["network"]["task_type"] == task_type
        if task_type == "segmentation":
            assert ours["network"]["parameters"] == stock["network"]["parameters"]
            assert task["target_ratio"] == 1.05 and task["target_met"] == (task["ratio"] <= 1.05)
            assert task["validation"] is None
        else:
            assert task["target_ratio"] is None and task["target_met"] is None
            validation = task["validation"]
            assert len(validation["epoch_s"]) == len(validation["stock_batch_s"]) == settings["rounds"]
            assert validation["n_cases"] >= 1
            assert validation["seconds_per_case"] == validation["median_epoch_s"] / validation["n_cases"] > 0
    assert "| segmentation | FomoFinetuneTrainer |" in done.stdout and "ratio ours / stock" in done.stdout
    assert "Using device" not in done.stdout  # nnU-Net's output went to the log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trainer_overhead.json", "trainer_overhead.log"]


def test_help_explains_every_option():
    done = run_fresh([sys.executable, str(BENCHMARK), "--help"])
    assert done.returncode == 0
    assert all(flag in done.stdout for flag in ("--out", "--tasks", "--device", "--starting-filters", "--patch-size",
                                                "--head-scale", "--cases", "--rounds", "--steps", "--workers",
                                                "--quick"))

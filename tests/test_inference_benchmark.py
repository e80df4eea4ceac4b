"""``benchmarks/gpu_check.sh --device cpu --quick``, as on machines without a GPU: the training check and
``benchmarks/inference.py``, whose every part of a container call is timed and whose totals are their sums."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fresh_process import run_fresh
import worker_pools

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "benchmarks" / "inference.py"
GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"
PARTS = ("read", "preprocess", "write")


def test_cpu_gpu_check_trains_then_times_every_part_of_a_regression_call(tmp_path: Path):
    done = subprocess.run(["bash", str(GPU_CHECK), "--device", "cpu", "--quick", "--tasks", "3", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, env=worker_pools.subprocess_env(os.environ))
    logs = "".join(p.read_text()[-2000:] for p in tmp_path.rglob("*.log"))
    assert done.returncode == 0, done.stderr[-3000:] + logs
    training = json.loads((tmp_path / "training" / "gpu_training.json").read_text())
    (trained,) = training["tasks"].values()
    assert trained["trainer"] == "FomoRegressionTrainer" and trained["validation_metric"] == "val_mae"
    assert trained["iterations_per_second"] > 0 and trained["peak_memory_gib"] > 0
    assert trained["validation_value"] > 0  # a mean absolute error in years, from whole validation cases
    assert "| FomoRegressionTrainer |" in done.stdout

    inference = tmp_path / "inference"
    report = json.loads((inference / "inference.json").read_text())
    task = report["tasks"]["3"]
    seconds = task["seconds"]
    network = seconds["network"]
    # the regression trainer mirrors left-right only: 2 passes per fold; --quick runs every configuration
    assert {key: entry["passes"] for key, entry in network.items()} == {
        "1_fold_no_mirroring": 1, "5_folds_no_mirroring": 5, "1_fold_mirroring": 2, "5_folds_mirroring": 10}
    assert all(entry["how"] != "derived" and entry["seconds"] > 0 for entry in network.values())
    assert all(seconds[part] > 0 for part in PARTS)
    expected = (report["process"]["start_and_imports"] + seconds["model_loading"]["exported_checkpoints_5_folds"]
                + sum(seconds[part] for part in PARTS) + network["5_folds_mirroring"]["seconds"])
    assert task["per_call_seconds"]["5_folds_mirroring"] == pytest.approx(expected)
    # the exported checkpoints leave the optimizer state behind
    assert task["model_size_mb"]["exported_checkpoints"] < task["model_size_mb"]["training_checkpoints"]
    assert seconds["network_with_autograd"] > 0 and seconds["weights_swap_per_fold"] > 0
    assert "| **one call, 5 folds mirroring** |" in done.stdout
    assert sorted(p.name for p in inference.iterdir()) == ["inference.json", "inference.log"]  # work folder gone


def test_help_explains_every_option():
    done = run_fresh([sys.executable, str(BENCHMARK), "--help"])
    assert done.returncode == 0
    assert all(flag in done.stdout for flag in ("--out", "--tasks", "--starting-filters", "--shape", "--repeats",
                                                "--max-direct-passes", "--device", "--quick"))


def test_gpu_check_refuses_an_unknown_option(tmp_path: Path):
    done = subprocess.run(["bash", str(GPU_CHECK), "--devices", "cpu", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown option --devices" in done.stderr
    assert not any(tmp_path.iterdir())

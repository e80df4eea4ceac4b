"""``benchmarks/data_loading.py --quick``: both trainers' loaders at every worker count and patch, side by side."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fresh_process import run_fresh

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "benchmarks" / "data_loading.py"
KINDS = ("case_level", "segmentation")


def test_quick_run_measures_both_loaders_and_networks(tmp_path: Path):
    done = run_fresh([sys.executable, str(BENCHMARK), "--quick", "--out", str(tmp_path)], cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "data_loading.json").read_text())
    assert report["trainers"] == {"case_level": "FomoRegressionTrainer_Scratch", "segmentation": "nnUNetTrainer"}
    assert [p["patch_size"] for p in report["patches"]] == [[32] * 3]
    for patch in report["patches"]:
        assert [row["workers"] for row in patch["loaders"]] == report["workers"] == [0, 2]
        for kind in KINDS:
            network = patch["network"][kind]
            assert len(network["step_s"]) == report["repeats"] == 2
            assert network["samples_per_s"] == patch["batch_size"] / network["median_step_s"]
        for row in patch["loaders"]:
            for kind in KINDS:
                loader = row[kind]
                assert len(loader["samples_per_s"]) == len(loader["startup_s"]) == 2
                assert loader["median_samples_per_s"] > 0 and loader["median_startup_s"] > 0
                # nnU-Net ran the requested workers (it caps them at the CPU count), and the warm-up drew more
                # batches than their two queues of 6 could hold
                assert loader["worker_processes"] == min(row["workers"], os.cpu_count())
                assert loader["warmup_batches"] > (2 * 6 if row["workers"] else 0)
                assert loader["loader_over_network"] == (loader["median_samples_per_s"]
                                                         / patch["network"][kind]["samples_per_s"])
            medians = [row[kind]["median_samples_per_s"] for kind in KINDS]
            assert row["ratio"] == medians[0] / medians[1]
            assert row["processes_left"] == 0  # every measurement's workers were shut down
    assert report["processes_left"] == 0
    assert "| patch | batch | workers |" in done.stdout and "Loader slower than its network" in done.stdout
    assert "nnUNetTrainer" in done.stdout and "Using splits" not in done.stdout  # nnU-Net's chatter went to the log
    assert "Using splits" in (tmp_path / "data_loading.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data_loading.json", "data_loading.log"]  # work folder gone


def test_help_explains_every_option():
    done = run_fresh([sys.executable, str(BENCHMARK), "--help"])
    assert done.returncode == 0
    assert all(flag in done.stdout for flag in ("--out", "--task", "--cases", "--spacing", "--patch-edges", "--workers",
                                                "--batches", "--repeats", "--starting-filters", "--device", "--quick"))


def test_patch_edges_must_fit_the_network():
    done = run_fresh([sys.executable, str(BENCHMARK), "--out", "unused", "--patch-edges", "40"])
    assert done.returncode == 2 and "multiple of 16" in done.stderr

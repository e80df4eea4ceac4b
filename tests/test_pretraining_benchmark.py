"""``benchmarks/pretraining.py --reuse``: the paired comparison of two finished demo runs, on hand-made reports whose
answer is known (the runs themselves are the demo's, tested elsewhere)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from nnunet_ext.dataset_conversion.tasks import FOMO_KEY
from nnunet_ext.demo import DEMO_DATASET_IDS

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "benchmarks" / "pretraining.py"


def fake_run(folder: Path, rows_by_task: dict, train_fraction: float = 1.0) -> None:
    """A finished demo output as far as the benchmark reads it: each task's per-case rows and its dataset.json."""
    (folder).mkdir(parents=True)
    (folder / "REPORT.md").write_text("# fomo_demo\n")
    for task, rows in rows_by_task.items():
        report = folder / "reports" / f"task{task}"
        report.mkdir(parents=True)
        (report / "per_case.json").write_text(json.dumps(
            [{"case": "x", "model": "fold 0", "target": 0, "prediction": 0.0}] + rows))
        raw = folder / "nnUNet_raw" / f"Dataset{DEMO_DATASET_IDS[task]}_Task{task}"
        raw.mkdir(parents=True)
        (raw / "dataset.json").write_text(json.dumps({FOMO_KEY: {"train_fraction": train_fraction}}))


def run(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARK), "--out", str(out), "--reuse", "--n-bootstrap", "500",
                           *args], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_paired_differences_match_independent_metrics(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    labels = np.arange(n) % 2
    good, poor = (1 / (1 + np.exp(-(2 * labels - 1 + rng.normal(0, s, n)))) for s in (0.5, 3.0))
    ages = rng.uniform(20, 80, n)
    close, far = ages + rng.normal(0, 2, n), ages + rng.normal(0, 12, n)
    dice_a, dice_b = rng.uniform(0.6, 0.9, n), rng.uniform(0.2, 0.5, n)

    def rows(task, values, targets=None):
        return [{"case": f"c{i}", "model": "ensemble", **({"dice": float(v)} if task == 2 else
                {"target": float(targets[i]), "prediction": float(v)})} for i, v in enumerate(values)]

    fake_run(tmp_path / "pretrained", {1: rows(1, good, labels), 2: rows(2, dice_a), 3: rows(3, close, ages)})
    fake_run(tmp_path / "scratch", {1: rows(1, poor, labels), 2: rows(2, dice_b), 3: rows(3, far, ages)})
    done = run(tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "pretraining.json").read_text())
    by_task = {r["task"]: r for r in report["tasks"]}
    expected = {1: roc_auc_score(labels, good) - roc_auc_score(labels, poor),
                2: dice_a.mean() - dice_b.mean(),
                3: np.abs(close - ages).mean() - np.abs(far - ages).mean()}
    for task, difference in expected.items():
        assert by_task[task]["difference"]["value"] == pytest.approx(difference)
        assert by_task[task]["pretrained_ahead"] and by_task[task]["paired_ci_excludes_zero"]
        low, high = by_task[task]["difference"]["ci_low"], by_task[task]["difference"]["ci_high"]
        assert low <= difference <= high
    assert report["target_met"] and "met" in done.stdout


def test_identical_runs_differ_by_exactly_nothing_and_a_missing_run_is_refused(tmp_path):
    rows = [{"case": f"c{i}", "model": "ensemble", "target": float(i % 2), "prediction": 0.1 * i} for i in range(10)]
    fake_run(tmp_path / "pretrained", {1: rows})
    fake_run(tmp_path / "scratch", {1: rows})
    done = run(tmp_path, "--tasks", "1")
    assert done.returncode == 0, done.stderr
    task = json.loads((tmp_path / "pretraining.json").read_text())["tasks"][0]
    assert task["difference"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert not task["pretrained_ahead"]
    refused = run(tmp_path / "elsewhere")
    assert refused.returncode == 2 and "--reuse" in refused.stderr and not (tmp_path / "elsewhere").exists()


def test_runs_on_different_shares_of_the_subjects_are_refused_and_the_share_is_reported(tmp_path):
    rows = [{"case": f"c{i}", "model": "ensemble", "target": float(i % 2), "prediction": 0.1 * i} for i in range(10)]
    fake_run(tmp_path / "mixed" / "pretrained", {1: rows}, train_fraction=0.25)
    fake_run(tmp_path / "mixed" / "scratch", {1: rows})
    refused = run(tmp_path / "mixed", "--tasks", "1")
    assert refused.returncode == 2 and "different shares" in refused.stderr and "[0.25, 1.0]" in refused.stderr
    fake_run(tmp_path / "quarter" / "pretrained", {1: rows}, train_fraction=0.25)
    fake_run(tmp_path / "quarter" / "scratch", {1: rows}, train_fraction=0.25)
    done = run(tmp_path / "quarter", "--tasks", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "quarter" / "pretraining.json").read_text())["train_fraction"] == 0.25
    assert "trained on 0.25 of the training subjects" in done.stdout

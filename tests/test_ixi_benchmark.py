"""``benchmarks/ixi_brain_age.py --quick`` on the real IXI data: the whole benchmark runs (with a head pooling two
levels) and its folds predict.

The quick run (12 subjects at 4 mm, 1 epoch x 2 steps per fold) only proves that the machinery keeps working:
conversion, planning, 5 trained folds as an nnU-Net results folder, out-of-fold metrics with CIs beside the two
baselines, JSON and figure, and ``fomo_predict`` applying the 5-fold ensemble to subjects in the FOMO layout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_ext.errors import EXIT_BAD_INPUT

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "benchmarks" / "ixi_brain_age.py"
IXI = REPO.parent / "shared" / "data" / "ixi_brain_age"
REPORTED = ("mae", "rmse", "pearson_r", "r2", "mean_error")
#: Subjects handed to fomo_predict (in the FOMO layout, T1 only).
N_PREDICTED = 2
#: ``fomo_predict`` (its console script) in a fresh process, so that nnU-Net reads the folders given in its env.
FOMO_PREDICT = "import sys; from nnunet_ext.inference.predict import main; sys.exit(main(sys.argv[1:]))"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})})


@pytest.mark.skipif(not IXI.is_dir(), reason=f"{IXI} not present")
def test_quick_benchmark_reports_cnn_and_baselines_and_its_folds_predict(tmp_path: Path):
    out = tmp_path / "bench"
    done = run(str(BENCHMARK), "--quick", "--out", str(out), "--head-pool-levels", "3", "4", "--head-pooling", "avgmax")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "ixi_brain_age.json").read_text())
    plans = json.loads(next((out / "nnUNet_preprocessed").glob("*/nnUNetPlans.json")).read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert (arch["head_pool_levels"], arch["head_pooling"]) == ([3, 4], "avgmax")
    assert set(report["results"]) == {"cnn", "training_mean", "ridge_voxels"}
    for summary in report["results"].values():
        assert set(summary["pooled"]) == set(REPORTED)
        assert summary["n_cases"] == 12 and len(summary["per_fold"]) == 5
        # a percentile interval is ordered, but need not hold the point estimate (tests/test_bootstrap.py)
        mae = summary["pooled"]["mae"]
        assert 0 <= mae["ci_low"] <= mae["ci_high"] and mae["value"] >= 0
    assert (out / "ixi_brain_age.png").is_file()
    assert "Pooled out-of-fold metrics" in done.stdout and "ridge_voxels" in done.stdout

    # the README's command: the 5-fold ensemble on new subjects given in the FOMO layout
    subjects = sorted(p.name for p in (IXI / "preprocessed").iterdir())[-N_PREDICTED:]
    for subject in subjects:
        (tmp_path / "new" / "preprocessed" / subject).mkdir(parents=True)
        (tmp_path / "new" / "preprocessed" / subject / "ses_1").symlink_to(IXI / "preprocessed" / subject / "ses_1")
    nnunet = {name: str(out / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    predicted = run("-c", FOMO_PREDICT, "-i", str(tmp_path / "new"), "-o", str(tmp_path / "pred"),
                    "-d", report["dataset"], "-tr", report["trainer"], "-f", "0", "1", "2", "3", "4",
                    "-device", "cpu", env={**nnunet, "nnUNet_def_n_proc": "1"})
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    records = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert [r["case"] for r in records] == [f"{s}_ses_1" for s in subjects]
    assert all(0 < r["prediction"] < 100 and len([k for k in r if k.startswith("fold_")]) == 5 for r in records)


def test_bad_input_is_refused_with_a_clear_message(tmp_path: Path):
    done = run(str(BENCHMARK), "--quick", "--ixi", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert done.returncode == EXIT_BAD_INPUT
    assert "FOMO Task 3 layout" in done.stderr


def test_help_states_the_budget():
    done = run(str(BENCHMARK), "--help")
    assert done.returncode == 0 and "minutes" in done.stdout and "--quick" in done.stdout

"""``benchmarks/conversion.py --quick``: both methods run on the same files and the ratio is theirs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fresh_process import run_fresh

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "benchmarks" / "conversion.py"


def test_quick_run_reports_both_methods_and_their_ratio(tmp_path: Path):
    done = run_fresh([sys.executable, str(BENCHMARK), "--quick", "--task", "1", "--out", str(tmp_path)], cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "conversion.json").read_text())
    medians = report["median_seconds"]
    assert all(len(times) == report["repeats"] == 2 for times in report["seconds"].values())
    assert report["ratio"] == medians["fomo_convert"] / medians["nibabel_load_save"] > 0
    # Task 1 has 4 modalities per session (its label is a text file): every image was timed, not a few
    assert report["n_files"] >= 3 * report["n_cases"]
    assert "ratio fomo_convert / nibabel" in done.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["conversion.json"]  # the work folder is gone


def test_help_explains_every_option():
    done = run_fresh([sys.executable, str(BENCHMARK), "--help"])
    assert done.returncode == 0
    assert all(flag in done.stdout for flag in ("--out", "--task", "--cases", "--shape", "--repeats", "--quick"))

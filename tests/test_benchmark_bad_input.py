"""Every benchmark script refuses bad input with one ``error:`` line and exit status 2, before creating anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fresh_process import run_fresh

from nnunet_ext.errors import EXIT_BAD_INPUT

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
#: Every script with an ``--out`` option.
SCRIPTS = ("conversion", "data_loading", "gpu_training", "inference", "trainer_overhead", "ixi_brain_age",
           "ixi_recipe_search")
#: Scripts whose ``--device cuda`` needs a GPU (gpu_training by default).
DEVICE_SCRIPTS = ("data_loading", "gpu_training", "inference", "trainer_overhead", "ixi_brain_age")


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return run_fresh([sys.executable, str(BENCHMARKS / f"{script}.py"), *args], cwd=REPO)


def assert_refused(done: subprocess.CompletedProcess, line_start: str) -> None:
    assert done.returncode == EXIT_BAD_INPUT, done.stderr[-3000:]
    assert done.stderr.startswith(line_start) and done.stderr.count("\n") == 1, done.stderr[-3000:]


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_out_that_is_a_file_is_refused(script: str, tmp_path: Path):
    out = tmp_path / "results.json"
    out.write_text("kept")
    assert_refused(run(script, "--out", str(out), "--device", "cpu") if script in DEVICE_SCRIPTS
                   else run(script, "--out", str(out)), f"error: {out}: --out is a file, not a folder")
    assert out.read_text() == "kept" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("script", DEVICE_SCRIPTS)
def test_cuda_without_a_gpu_is_refused_before_anything_is_created(script: str, tmp_path: Path):
    out = tmp_path / "out"
    assert_refused(run(script, "--out", str(out), *(() if script == "gpu_training" else ("--device", "cuda"))),
                   "error: --device cuda: torch sees no CUDA GPU")
    assert not out.exists()


@pytest.mark.parametrize("script", ["ixi_brain_age", "ixi_recipe_search"])
def test_a_missing_ixi_folder_leaves_no_output_behind(script: str, tmp_path: Path):
    out = tmp_path / "out"
    assert_refused(run(script, "--ixi", str(tmp_path / "missing"), "--out", str(out)),
                   f"error: {tmp_path / 'missing'}: expected the FOMO Task 3 layout")
    assert not out.exists()

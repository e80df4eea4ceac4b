"""``benchmarks/gpu_training.py`` measures with what ``nnUNetv2_train`` sets on a GPU (cuDNN autotuning, one CPU
thread), so its figures are those of a real run. The settings need no GPU to check, only a fresh process (torch
takes its inter-op thread count once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _settings_after(device: str) -> dict:
    code = ("import json, sys, torch; sys.path.insert(0, 'benchmarks'); import gpu_training; "
            f"gpu_training.use_nnunet_train_settings({device!r}); "
            "print(json.dumps({'threads': torch.get_num_threads(), 'interop': torch.get_num_interop_threads(), "
            "'benchmark': torch.backends.cudnn.benchmark, 'deterministic': torch.backends.cudnn.deterministic}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_on_a_gpu_the_benchmark_trains_as_nnunetv2_train_does():
    assert _settings_after("cuda") == {"threads": 1, "interop": 1, "benchmark": True, "deterministic": False}


def test_on_the_cpu_the_benchmark_keeps_the_threads_it_was_given():
    settings = _settings_after("cpu")
    assert settings["threads"] == 2 and settings["benchmark"] is False

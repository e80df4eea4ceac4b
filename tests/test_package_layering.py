"""Imports flow one way: the metrics import none of the packages above them, the trainers no reporting code."""

from __future__ import annotations

import json
import subprocess
import sys

def modules_after_import(module: str) -> set:
    """The modules a fresh interpreter holds after importing ``module``."""
    done = subprocess.run([sys.executable, "-c", f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"],
                          capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout))


def top_packages(modules: set, prefix: str) -> set:
    return {m for m in modules if m == prefix or m.startswith(prefix + ".")}


def test_the_metrics_import_no_evaluation_inference_nnunet_or_plotting_code():
    loaded = modules_after_import("nnunet_ext.metrics")
    for package in ("nnunet_ext.evaluation", "nnunet_ext.inference", "nnunet_ext.trainers", "nnunetv2", "matplotlib"):
        assert not top_packages(loaded, package), package


def test_the_trainers_import_the_metrics_not_the_evaluation_commands():
    loaded = modules_after_import("nnunet_ext.trainers")
    assert {"nnunet_ext.trainers.classification", "nnunet_ext.trainers.regression"} <= loaded
    assert "nnunet_ext.metrics" in loaded
    assert not top_packages(loaded, "nnunet_ext.evaluation")

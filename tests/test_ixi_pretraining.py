"""``benchmarks/ixi_pretraining.py``: the paired comparison, the pool it pretrains on, and its refusals.

The whole run takes the real data and an hour of CPU (``--quick``: minutes); these tests check its parts on small
inputs: a paired bootstrap must see a constant per-subject improvement as exactly that (an unpaired one would not),
the pretraining pool links every subject of each source once, bad settings are refused before anything runs,
and ``benchmarks/gpu_pretraining.sh`` (run on a lent GPU only) calls it with settings it accepts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnunet_ext.errors import EXIT_BAD_INPUT, FomoInputError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import ixi_pretraining  # noqa: E402


def predictions(true: np.ndarray, predicted: np.ndarray) -> dict:
    return {f"sub_{i}": {"true": float(t), "predicted": float(p)} for i, (t, p) in enumerate(zip(true, predicted))}


def test_a_constant_per_subject_gain_is_exactly_that_gain_with_a_zero_width_paired_interval():
    rng = np.random.default_rng(0)
    true = rng.uniform(20, 80, 40)
    scratch_error = rng.uniform(2, 20, 40) * rng.choice([-1, 1], 40)
    gain = 1.5
    pretrained_error = scratch_error - np.sign(scratch_error) * gain  # every |error| smaller by exactly 1.5
    result = ixi_pretraining.paired_difference(predictions(true, true + pretrained_error),
                                               predictions(true, true + scratch_error), seed=0, n_resamples=500)
    assert result["value"] == pytest.approx(-gain)
    # paired: every resample sees the same -1.5; an unpaired bootstrap would spread over several years here
    assert result["ci_low"] == pytest.approx(-gain) and result["ci_high"] == pytest.approx(-gain)
    assert result["ci_excludes_zero"] and result["n_subjects"] == 40


def test_the_difference_is_the_mean_absolute_error_difference_and_other_subjects_are_refused():
    rng = np.random.default_rng(1)
    true = rng.uniform(20, 80, 30)
    a, b = true + rng.normal(0, 5, 30), true + rng.normal(0, 9, 30)
    result = ixi_pretraining.paired_difference(predictions(true, a), predictions(true, b), seed=3, n_resamples=300)
    expected = np.mean(np.abs(a - true)) - np.mean(np.abs(b - true))
    assert result["value"] == pytest.approx(expected)
    assert result["ci_low"] < expected < result["ci_high"]
    fewer = dict(list(predictions(true, a).items())[:-1])
    with pytest.raises(FomoInputError, match="different subjects"):
        ixi_pretraining.paired_difference(fewer, predictions(true, b), seed=3, n_resamples=10)


def test_the_pool_links_each_source_subject_once_and_only_subject_folders(tmp_path: Path):
    pool, ixi = tmp_path / "pool", tmp_path / "ixi" / "preprocessed"
    for folder, subjects in ((pool, ("sub_5015", "sub_5016", "sub_5017")), (ixi, ("sub_105", "sub_126"))):
        for subject in subjects:
            (folder / subject / "ses_1").mkdir(parents=True)
    (pool / "README.md").write_text("not a subject")
    linked = ixi_pretraining.link_subjects([pool, ixi], tmp_path / "linked", limit=2)
    assert sorted(p.name for p in linked.iterdir()) == ["sub_105", "sub_126", "sub_5015", "sub_5016"]
    assert (linked / "sub_105").resolve() == (ixi / "sub_105").resolve()


@pytest.mark.parametrize("args, message", [
    (["--epochs", "1"], "--epochs must be at least 2"),
    (["--pretrain-iterations", "0"], "--pretrain-iterations must be positive"),
    (["--sources", "everything"], "invalid choice"),
    (["--sources", "pool", "--finetune-from", "pool_ixi"], "only sources pretrained on"),
    (["--reuse-checkpoints", "/nonexistent"], "no pool.ckpt to reuse"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path: Path, args, message):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ixi_pretraining.py"), "--out", str(out), *args],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode in (EXIT_BAD_INPUT, 2) and message in done.stderr
    assert not out.exists()


def write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def test_rescore_pairs_each_arm_with_scratch_and_each_probe_with_the_random_encoder(tmp_path: Path):
    rng = np.random.default_rng(2)
    true = rng.uniform(20, 80, 12)
    errors = {"scratch": 10.0, "pool": 7.0, "random": 9.0, "probe_pool": 4.0}  # constant |error| per model
    pooled = {"mae": {"value": 1.0, "ci_low": 0.5, "ci_high": 1.5},
              "pearson_r": {"value": 0.1, "ci_low": 0.0, "ci_high": 0.2}}
    for arm in ("scratch", "pool"):
        write_json(tmp_path / f"finetune_{arm}" / "ixi_brain_age.json", {
            "results": {name: {"pooled": pooled} for name in ("cnn", "ridge_voxels", "training_mean")},
            "predictions": {"cnn": predictions(true, true + errors[arm])}})
    for encoder, key in (("random", "random"), ("pool", "probe_pool")):
        write_json(tmp_path / f"probe_{encoder}" / "linear_probe.json", {
            "summary": {"pooled_with_ci": pooled},
            "cases": [{"case": f"sub_{i}", "target": t, "prediction": t - errors[key]} for i, t in enumerate(true)]})
    write_json(tmp_path / "ixi_pretraining.json", {
        "settings": {"seed": 0, "n_bootstrap": 50, "spacing": 4.0, "starting_filters": 8, "pretrain_epochs": 1,
                     "pretrain_iterations": 1, "epochs": 2, "iterations": 1, "folds": [0]},
        "checkpoints": {}, "minutes": {"finetune_scratch": 1.0}})
    report = ixi_pretraining.rescore(tmp_path)
    paired = report["comparison"]["paired_mae_difference"]
    assert paired["fine-tuned from pool - from scratch"]["value"] == pytest.approx(-3.0)
    assert paired["linear probe, pool - random encoder"]["value"] == pytest.approx(-5.0)
    assert "| linear probe, pool - random encoder | -5.00 [-5.00, -5.00] | yes |" in \
        (tmp_path / "ixi_pretraining.md").read_text()


def gpu_script_command(tmp_path: Path, *script_args: str) -> list:
    """The benchmark command line that ``benchmarks/gpu_pretraining.sh`` runs, recorded by a stand-in interpreter."""
    recorded = tmp_path / "argv.txt"
    interpreter = tmp_path / "python"
    interpreter.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {recorded}\n')
    interpreter.chmod(0o755)
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_pretraining.sh"), *script_args],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": str(interpreter)})
    assert done.returncode == 0, done.stderr
    return recorded.read_text().splitlines()


def test_the_gpu_script_runs_the_benchmark_with_settings_it_accepts(tmp_path: Path):
    """The script is run on a lent GPU only: a renamed or retyped option of the benchmark must fail here, not
    there. Its settings are the issue's: 1 mm, the real UNet-B width, the pool and the IXI images, one fold."""
    script, *argv = gpu_script_command(tmp_path, "--device", "cpu", str(tmp_path / "out"))
    assert script == "benchmarks/ixi_pretraining.py"
    settings = ixi_pretraining.settings_from_args(ixi_pretraining.build_parser().parse_args(argv))
    assert (settings.device, settings.spacing, settings.starting_filters) == ("cpu", 1.0, 32)
    assert settings.sources == ("pool_ixi",) and settings.folds == (0,) and not settings.probes
    assert settings.pretrain_patch_size == (96, 96, 96)
    assert settings.finetune_trainers == ("FomoRegressionTrainer",)
    assert settings.out == (tmp_path / "out").resolve()
    assert "--quick" in gpu_script_command(tmp_path, "--device", "cpu", "--quick")


def test_the_gpu_script_refuses_an_unknown_option():
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_pretraining.sh"), "--folds", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "unknown option --folds" in done.stderr

"""``fomo_demo`` end to end, tiny: one task, two folds, ten subjects, ``--smoke`` trainers, from scratch.

The full demo takes 11 minutes; this run goes through every one of its steps (synthetic data, conversion, planning,
two folds trained side by side, model selection, evaluation of each fold and the ensemble, REPORT.md) and checks
that ``--tasks``, ``--folds``, ``--cases``, ``--seed``, ``--init``, ``--train-fraction`` and ``--smoke`` each have
their effect.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import worker_pools
from fresh_process import run_fresh

TASK, FOLDS, CASES, SEED, TRAIN_FRACTION = 3, ("0", "1"), 10, 7, 0.75
DEMO = "import sys; from nnunet_ext.demo import main; sys.exit(main(sys.argv[1:]))"


def test_a_tiny_demo_runs_every_step_with_the_flags_given(tmp_path: Path):
    out = tmp_path / "demo"
    done = run_fresh([sys.executable, "-c", DEMO, "--out", str(out), "--tasks", str(TASK), "--folds", *FOLDS,
                      "--cases", str(CASES), "--seed", str(SEED), "--init", "scratch", "--smoke",
                      "--train-fraction", str(TRAIN_FRACTION)],
                     env=worker_pools.subprocess_env(os.environ))  # the folds' own (spawned) processes too
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # --tasks and --init scratch: one task dataset, no pretraining pool
    raw = out / "nnUNet_raw"
    assert [p.name for p in raw.iterdir()] == ["Dataset903_FOMOBrainAge"]
    dataset = raw / "Dataset903_FOMOBrainAge"
    # --cases: that many subjects (some with two sessions); --train-fraction: of those outside the test set (8), the
    # dataset keeps 3 parts of a grouped 4-part split as training cases, and leaves the others out
    assert len(list((out / "fomo_data" / f"fomo-task{TASK}" / "preprocessed").iterdir())) == CASES
    fomo = json.loads((dataset / "dataset.json").read_text())["fomo"]
    images = sorted(p.name[:-len("_0000.nii.gz")] for part in ("imagesTr", "imagesTs")
                    for p in (dataset / part).glob("*_0000.nii.gz"))
    assert images == sorted(fomo["subjects"]) and fomo["train_fraction"] == TRAIN_FRACTION
    assert 5 <= len({fomo["subjects"][case] for case in fomo["targets"]}) <= 7 and fomo["left_out_cases"] >= 1
    # --smoke and --folds: the _debug trainer, exactly the folds asked for, side by side, each with its own log, and
    # one console line naming the step's log
    trainer = "FomoRegressionTrainer_debugScratch"
    model = out / "nnUNet_results" / dataset.name / f"{trainer}__nnUNetPlans__3d_fullres"
    assert sorted(p.name for p in model.glob("fold_*")) == [f"fold_{f}" for f in FOLDS]
    for fold in FOLDS:
        fold_log = (out / "logs" / f"task{TASK}_4_training_fold{fold}.log").read_text()
        assert fold_log.startswith(f"$ nnUNetv2_train 903 3d_fullres {fold} -tr {trainer} -device cpu\n")
        assert "Epoch time" in fold_log
    assert "2 folds in 2 processes" in (out / "logs" / f"task{TASK}_4_training.log").read_text()
    training_lines = [line for line in done.stdout.replace("\r", "\n").splitlines() if "training_fold" in line
                      or line.rstrip().endswith(f"log: logs/task{TASK}_4_training.log")]
    assert len(training_lines) == 1
    # --seed reaches the commands that draw the data and the folds
    report = (out / "REPORT.md").read_text()
    commands = report.split("## Commands run")[1]
    for command in ("fomo_make_synthetic", "fomo_convert", "fomo_evaluate"):
        line = next(line for line in commands.splitlines() if line.startswith(command))
        assert f" --seed {SEED} " in f"{line} ", line
    assert "Smoke run" in report and "from random weights" in report and "`_debugScratch` trainers" in report
    assert f"Trained on {TRAIN_FRACTION:g} of each task's training subjects" in report


def test_each_task_plans_its_start_from_the_demo_checkpoint_or_from_nothing():
    """The pretrained arm plans every task with the demo's checkpoint (Task 2's stem takes it on every channel);
    the scratch arm names no checkpoint at all."""
    from nnunet_ext.demo import DEMO_RECIPES

    checkpoint = Path("/models/demo.ckpt")
    for task, recipe in DEMO_RECIPES.items():
        arguments = recipe.start_arguments(checkpoint)
        assert arguments[:2] == ["--pretrained", str(checkpoint)], task
        assert ("--channel-adaptation" in arguments) == (task == 2), task
        assert recipe.start_arguments(None) == []
    assert DEMO_RECIPES[2].start_arguments(checkpoint)[-2:] == ["--channel-adaptation", "copy"]

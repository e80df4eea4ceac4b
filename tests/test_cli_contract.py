"""One contract for every console script, run as a user runs it (the installed script, in a fresh process): a user
error exits 2 with one line naming the file or option and what is wrong, no traceback, and nothing written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, List

import pytest
import torch

from fomo_files import FomoTree, write_broken_header
from nnunet_ext.errors import EXIT_BAD_INPUT

SCRIPTS = Path(sys.executable).parent
#: A start-up of torch and nnU-Net takes a few seconds; a hanging command must not hang the suite.
COMMAND_TIMEOUT_S = 120


def fomo_task1(root: Path) -> Path:
    tree = FomoTree(root / "fomo-task1", 1)
    for subject in range(1, 7):
        tree.add_case(f"sub_{subject}", label=subject % 2, seed=subject)
    return tree.root


def zero_voxel_size_input(root: Path) -> List[str]:
    data = fomo_task1(root)
    write_broken_header(data / "preprocessed/sub_3/ses_1/flair.nii.gz", zooms=(0.0, 1.0, 1.0))
    return ["fomo_convert", "--task", "1", "-i", str(data), "-d", "7"]


def foreign_checkpoint(root: Path) -> List[str]:
    torch.save({"conv1.weight": torch.zeros(8, 1, 3, 3)}, root / "other.pt")
    return ["fomo_plan_and_preprocess", "-d", "7", "--pretrained", str(root / "other.pt")]


def file_in_place_of_output(root: Path) -> List[str]:
    (root / "out").write_text("not a folder")
    return ["fomo_demo", "--out", str(root / "out")]


def folder_named(path: Path) -> str:
    path.mkdir()
    return str(path)


# (command line made in a fresh folder, what stderr's error line must say)
CASES: dict[str, tuple[Callable[[Path], List[str]], str]] = {
    "convert: path in the name": (lambda root: ["fomo_convert", "--task", "1", "-i", str(fomo_task1(root)), "-d", "7",
                                                "-n", "../../evil"], "may only hold letters, digits"),
    "convert: one fold": (lambda root: ["fomo_convert", "--task", "1", "-i", str(fomo_task1(root)), "-d", "7",
                                        "--folds", "1"], "argument --folds: must be at least 2"),
    "convert: zero voxel size": (zero_voxel_size_input, "voxel size [0.0, 1.0, 1.0] mm"),
    "plan: zero spacing": (lambda root: ["fomo_plan_and_preprocess", "-d", "7", "--spacing", "0"],
                           "argument --spacing: must be positive"),
    "plan: unknown dataset": (lambda root: ["fomo_plan_and_preprocess", "-d", "7"], "7"),
    "inspect: missing file": (lambda root: ["fomo_inspect_checkpoint", str(root / "absent.ckpt")], "absent.ckpt"),
    "predict: fold abc": (lambda root: ["fomo_predict", "-i", str(root), "-o", str(root / "out"), "-d", "7", "-tr",
                                        "FomoClassificationTrainer", "-f", "abc"],
                          "argument -f/--folds: a fold is a non-negative integer or 'all'"),
    "evaluate: negative bootstrap": (lambda root: ["fomo_evaluate", "-d", "7", "-o", str(root / "out"),
                                                   "--n-bootstrap", "-1"],
                                     "argument --n-bootstrap: must be at least 1"),
    "ensemble: one input": (lambda root: ["fomo_ensemble", "-i", str(root / "a"), "-o", str(root / "out")],
                            "argument -i/--inputs: an ensemble needs at least two inputs"),
    "ensemble: missing input": (lambda root: ["fomo_ensemble", "-i", str(root / "a" / "p"), str(root / "b" / "p"),
                                              "-o", str(root / "out")], "no predictions.json here"),
    "model selection: unknown dataset": (lambda root: ["fomo_find_best_configuration", "-d", "7", "-tr",
                                                       "FomoClassificationTrainer"], "7"),
    "demo: output is a file": (file_in_place_of_output, "output path is a file, not a folder"),
    "challenge predict: flags of no task": (lambda root: ["fomo_challenge_predict", "--t1", str(root / "t1.nii.gz"),
                                                          "--flair", str(root / "f.nii.gz"), "--output",
                                                          str(root / "sub_1.txt")], "match no task"),
    "challenge predict: output is a folder": (lambda root: ["fomo_challenge_predict", "--t1", str(root / "t1.nii.gz"),
                                                            "--t2", str(root / "t2.nii.gz"), "--output",
                                                            folder_named(root / "sub_1.txt")],
                                              "output path is a folder"),
    "export submission: fold abc": (lambda root: ["fomo_export_submission", "--task", "1", "-d", "7", "-tr", "T",
                                                  "-f", "abc", "-o", str(root / "models")], "argument -f/--folds"),
    "synthetic: scale 2": (lambda root: ["fomo_make_synthetic", "--task", "1", "--out", str(root / "out"),
                                         "--scale", "2"], "scale"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_every_command_refuses_bad_input_with_one_line_and_status_2(case, tmp_path):
    make, message = CASES[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    argv = make(inputs)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
    before = sorted(tmp_path.rglob("*"))
    environment = {**os.environ, **{n: str(tmp_path / n) for n in ("nnUNet_raw", "nnUNet_preprocessed",
                                                                      "nnUNet_results")}}
    done = subprocess.run([str(SCRIPTS / argv[0]), *argv[1:]], capture_output=True, text=True, env=environment,
                          timeout=COMMAND_TIMEOUT_S, cwd=tmp_path)
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_sigterm_ends_a_forked_child_as_by_default_and_raises_only_in_the_owner():
    """nnU-Net forks worker pools inside our commands and ends them with SIGTERM (Pool.terminate); a child that
    turned it into an exception ran its exit clean-up on the pool's locks and could hang its parent forever."""
    import multiprocessing
    import time

    from nnunet_ext.errors import Terminated, terminate_gracefully

    with terminate_gracefully():
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
        child.start()
        child.terminate()
        child.join(timeout=10)
        assert child.exitcode == -signal.SIGTERM  # killed by the signal, not exit status 143 from Terminated
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode; never reached

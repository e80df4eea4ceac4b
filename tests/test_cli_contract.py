"""One contract for every console script, run as a user runs it (its installed entry point, in a process of its own,
``fresh_process``): a user error exits 2 with one line naming the file or option and what is wrong, no traceback,
and nothing written.

The commands run side by side, one per usable core, each in a folder of its own, and each case's test checks its
command's result.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pytest
import torch

from fomo_files import FomoTree, write_broken_header
from fresh_process import run_fresh
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
    "train ddp: outside torchrun": (lambda root: ["fomo_train_ddp", "7", "3d_fullres", "0"],
                                    "not set: start fomo_train_ddp with torchrun"),
}


#: Commands running at the same time: one. Forked from the zygote, a refusal takes a fraction of a second of one core;
#: a second zygote for a second command at a time would cost five.
PARALLEL_COMMANDS = 1


@dataclass
class CommandRun:
    """A case's command and what it left: its output, and the contents of its folder before and after it ran."""

    done: subprocess.CompletedProcess
    before: List[Path]
    after: List[Path]


def run_case(case: str, root: Path) -> CommandRun:
    """The case's command line, made in ``root/inputs``, run as the installed script in a fresh process, in ``root``
    with nnU-Net's (empty) folders there."""
    make, _ = CASES[case]
    inputs = root / "inputs"
    inputs.mkdir()
    argv = make(inputs)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir()
    before = sorted(root.rglob("*"))
    environment = {**os.environ, **{n: str(root / n) for n in ("nnUNet_raw", "nnUNet_preprocessed",
                                                                  "nnUNet_results")}}
    done = run_fresh([str(SCRIPTS / argv[0]), *argv[1:]], env=environment, timeout=COMMAND_TIMEOUT_S, cwd=root)
    return CommandRun(done, before, sorted(root.rglob("*")))


@pytest.fixture(scope="module")
def command_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Dict[str, "Future[CommandRun]"]]:
    """The commands of the cases this session runs (every case unless deselected), started together and run
    :data:`PARALLEL_COMMANDS` at a time, each in a folder of its own."""
    test = test_every_command_refuses_bad_input_with_one_line_and_status_2
    cases = [item.callspec.params["case"] for item in request.session.items
             if getattr(item, "function", None) is test]
    pool = ThreadPoolExecutor(PARALLEL_COMMANDS)
    try:
        yield {case: pool.submit(run_case, case, tmp_path_factory.mktemp("command")) for case in cases}
    finally:
        pool.shutdown(cancel_futures=True)  # an interrupted session starts no more commands


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_every_command_refuses_bad_input_with_one_line_and_status_2(case, command_runs):
    _, message = CASES[case]
    run = command_runs[case].result()
    done = run.done
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert run.after == run.before  # nothing written

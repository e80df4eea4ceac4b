"""``fomo_demo``'s training step: a failing fold shows where its log is and how it ended, and SIGTERM ends the folds
training side by side at once (their results are checked by the tiny demo of ``test_demo_smoke.py``)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from case_level_datasets import planned_case_level_dataset

from nnunet_ext import demo

DEBUG_TRAINER = "FomoClassificationTrainer_debug"
#: nnU-Net's 1000 epochs: a fold that would train for many minutes unless it is ended.
LONG_TRAINER = "FomoClassificationTrainer_Scratch"
N_CASES = 10
#: Seconds for the folds to start, and for the command and its fold workers to end after SIGTERM.
START_TIMEOUT_S, END_TIMEOUT_S = 60, 15
#: Two folds training side by side under the commands' SIGTERM guard, as fomo_demo runs them.
TRAIN_TWO_FOLDS = """
import sys
from pathlib import Path
from nnunet_ext import demo
from nnunet_ext.errors import Terminated, terminate_gracefully
root, dataset_id, trainer = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
settings = demo.DemoSettings(out=root, tasks=(1,), folds=(0, 1), cases=None, seed=0)
with terminate_gracefully():
    try:
        demo.train_folds(demo.Console(root), dataset_id, trainer, settings, "training", root / "logs" / "training.log")
    except Terminated:
        print("terminated", flush=True)
"""


def settings_for(root: Path, folds) -> demo.DemoSettings:
    return demo.DemoSettings(out=root, tasks=(1,), folds=folds, cases=None, seed=0)


def test_a_failing_fold_names_its_log_and_shows_its_end(tmp_path, tmp_path_factory, monkeypatch, capfd):
    dataset = planned_case_level_dataset(tmp_path_factory, tmp_path, "classification", N_CASES, monkeypatch)
    console, log = demo.Console(tmp_path), tmp_path / "logs" / "training.log"
    with pytest.raises(demo.StepFailed):
        demo.train_folds(console, dataset.dataset_id, "NoSuchTrainer", settings_for(tmp_path, (0,)), "training", log)
    fold_log = tmp_path / "logs" / "training_fold0.log"
    shown = capfd.readouterr().out
    assert "training: FAILED" in shown and f"fold 0 failed; its log: {fold_log}" in shown
    assert "NoSuchTrainer" in fold_log.read_text() and "Traceback" in fold_log.read_text()


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            pass
    return children


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc")
def test_sigterm_ends_the_folds_training_side_by_side_at_once(tmp_path, tmp_path_factory, monkeypatch):
    dataset = planned_case_level_dataset(tmp_path_factory, tmp_path, "classification", N_CASES, monkeypatch)
    command = subprocess.Popen([sys.executable, "-c", TRAIN_TWO_FOLDS, str(tmp_path), str(dataset.dataset_id),
                                LONG_TRAINER], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workers: list[int] = []
    try:
        fold_logs = [tmp_path / "logs" / f"training_fold{fold}.log" for fold in (0, 1)]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(log.is_file() for log in fold_logs):  # a fold's log: its worker is running the fold
            assert command.poll() is None and time.monotonic() < deadline, "the folds did not start"
            time.sleep(0.2)
        workers += [pid for pid in _children(command.pid) if "resource_tracker" not in
                    Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 2
        command.send_signal(signal.SIGTERM)
        output, _ = command.communicate(timeout=END_TIMEOUT_S)
        assert "terminated" in output
        deadline = time.monotonic() + END_TIMEOUT_S
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers), "a fold worker outlived the command"
    finally:  # a failed check leaves no training process behind
        if command.poll() is None:
            command.kill()
        command.wait()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.kill(pid, signal.SIGKILL)


def _ignore_sigterm_and_wait(ready) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(END_TIMEOUT_S * 4)


def test_a_worker_that_ignores_sigterm_is_killed(monkeypatch):
    monkeypatch.setattr(demo, "PROCESS_EXIT_TIMEOUT_S", 0.5)
    context = multiprocessing.get_context("fork")  # a child that only sleeps: forking is safe and instant
    ready = context.Event()
    stubborn = context.Process(target=_ignore_sigterm_and_wait, args=(ready,))
    plain = context.Process(target=time.sleep, args=(END_TIMEOUT_S * 4,))
    for process in (stubborn, plain):
        process.start()
    try:
        assert ready.wait(START_TIMEOUT_S), "the worker did not start"
        started = time.monotonic()
        demo._end_processes([stubborn, plain])
        assert time.monotonic() - started < END_TIMEOUT_S
        assert (stubborn.exitcode, plain.exitcode) == (-signal.SIGKILL, -signal.SIGTERM)
    finally:
        for process in (stubborn, plain):
            process.kill()
            process.join()

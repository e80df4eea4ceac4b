"""The tests' start of nnU-Net's worker pools (``worker_pools``): forked by default, spawned where a test asks for
nnU-Net's own start or another thread is at work, and the same in a shell script's Python commands."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading

import pytest
import worker_pools

SPAWN_METHOD = "import multiprocessing; print(multiprocessing.get_context('spawn').get_start_method())"


def test_nnunets_spawn_pools_fork_in_the_tests() -> None:
    assert multiprocessing.get_context("spawn").get_start_method() == "fork"
    assert multiprocessing.get_context("forkserver").get_start_method() == "forkserver"  # others untouched


@pytest.mark.real_spawn
def test_a_test_marked_real_spawn_gets_nnunets_own_spawn() -> None:
    assert multiprocessing.get_context("spawn").get_start_method() == "spawn"


def test_another_working_thread_keeps_the_spawn() -> None:
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        assert multiprocessing.get_context("spawn").get_start_method() == "spawn"
    finally:
        release.set()
        worker.join()


def test_a_forked_pool_worker_runs_on_one_torch_thread() -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as nnUNetv2_train -device cpu sets them
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            assert pool.apply(torch.get_num_threads) == 1
    finally:
        torch.set_num_threads(threads)


def test_a_shell_scripts_python_commands_start_pools_as_the_test_does() -> None:
    done = subprocess.run(["bash", "-c", f'"{sys.executable}" -c "{SPAWN_METHOD}"'], capture_output=True, text=True,
                          env=worker_pools.subprocess_env(os.environ), check=True)
    assert done.stdout.strip() == "fork"
    with worker_pools.started_by(worker_pools.SPAWN):
        done = subprocess.run([sys.executable, "-c", SPAWN_METHOD], capture_output=True, text=True, check=True,
                              env=worker_pools.subprocess_env(os.environ))
    assert done.stdout.strip() == "spawn"

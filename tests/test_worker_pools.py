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

#: What a pool of nnU-Net's asks for, asked from inside nnunetv2 (a module of that name).
NNUNET_POOL = "import multiprocessing; method = multiprocessing.get_context('spawn').get_start_method()"
SPAWN_METHOD = f"exec({NNUNET_POOL!r}, namespace := {{'__name__': 'nnunetv2.x'}}); print(namespace['method'])"


def nnunets_pool_method() -> str:
    namespace = {"__name__": "nnunetv2.x"}
    exec(NNUNET_POOL, namespace)
    return namespace["method"]


def test_nnunets_spawn_pools_fork_in_the_tests() -> None:
    assert nnunets_pool_method() == "fork"
    # our own code's spawn and other methods untouched
    assert multiprocessing.get_context("spawn").get_start_method() == "spawn"
    assert multiprocessing.get_context("forkserver").get_start_method() == "forkserver"


@pytest.mark.real_spawn
def test_a_test_marked_real_spawn_gets_nnunets_own_spawn() -> None:
    assert nnunets_pool_method() == "spawn"


def test_another_working_thread_keeps_the_spawn() -> None:
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        assert nnunets_pool_method() == "spawn"
    finally:
        release.set()
        worker.join()


def test_a_forked_pool_worker_runs_on_one_torch_thread() -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as nnUNetv2_train -device cpu sets them
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            assert pool.apply(torch.get_num_threads) == 1
    finally:
        torch.set_num_threads(threads)


def test_a_shell_scripts_python_commands_start_pools_as_the_test_does() -> None:
    done = subprocess.run(["bash", "-c", '"$0" -c "$1"', sys.executable, SPAWN_METHOD], capture_output=True, text=True,
                          env=worker_pools.subprocess_env(os.environ), check=True)
    assert done.stdout.strip() == "fork"
    with worker_pools.started_by(worker_pools.SPAWN):
        done = subprocess.run([sys.executable, "-c", SPAWN_METHOD], capture_output=True, text=True, check=True,
                              env=worker_pools.subprocess_env(os.environ))
    assert done.stdout.strip() == "spawn"

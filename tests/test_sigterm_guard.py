"""The commands' SIGTERM guard (``nnunet_ext.errors.terminate_gracefully``) and nnU-Net's fork pools.

nnU-Net forks worker pools inside our commands and ends them with SIGTERM (``Pool.terminate``), then joins them. A
worker that ran with the guard's Python-level handler could note that SIGTERM just before blocking on the pool's
semaphore and never act on it: the command hung for good, most often under load. Each test runs in a fresh
interpreter (no other threads to fork with) and is bounded in time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

#: How long the stress test forks pools under load: about 100 rounds (25 a second on 2 cores), where the guard of
#: stop 19 hung fork pools within 1-78 rounds under two busy processes.
STRESS_SECONDS = 4
#: A round of pools under load takes well under a second; a run past this margin is a hang.
STRESS_MARGIN_S = 40
#: Busy processes beside the pools, as a second job on the machine would be.
BUSY_PROCESSES = 2

FORKED_CHILD_SIGTERM = """
import multiprocessing, os, signal, sys, time
from nnunet_ext.errors import Terminated, terminate_gracefully
with terminate_gracefully():
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    child.start()
    time.sleep(1)
    child.terminate()
    child.join(timeout=10)
    print("child", child.exitcode)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    except Terminated as e:
        print("owner", e.code)
"""

CHILD_HANDLER = """
import multiprocessing, signal
from nnunet_ext.errors import terminate_gracefully

def handler(_):
    return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, signal.pthread_sigmask(signal.SIG_BLOCK, [])

with terminate_gracefully():
    owner_guarded = signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    with multiprocessing.get_context("fork").Pool(2) as pool:
        children = pool.map(handler, range(4))
    owner_blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
print(owner_guarded, all(default for default, _ in children), all(not blocked for _, blocked in children),
      not owner_blocked)
"""

POOLS_UNDER_LOAD = f"""
import multiprocessing, subprocess, sys, time
from nnunet_ext.errors import terminate_gracefully

def square(x):
    return x * x

busy = [subprocess.Popen([sys.executable, "-c",
                          "import time\\nend = time.monotonic() + {STRESS_SECONDS}\\nwhile time.monotonic() < end: pass"])
        for _ in range({BUSY_PROCESSES})]
rounds, end = 0, time.monotonic() + {STRESS_SECONDS}
with terminate_gracefully():
    while time.monotonic() < end:
        # the pattern of nnU-Net's create_lists_from_splitted_dataset_folder: a fork Pool left by its with block
        with multiprocessing.get_context("fork").Pool(8) as pool:
            assert pool.map(square, range(16)) == [x * x for x in range(16)]
        rounds += 1
for process in busy:
    process.wait()
print(rounds)
"""


def run_fresh(code: str, timeout: float) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in its own session; on timeout, end the whole group (pool workers too)."""
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError(f"hung: still running after {timeout} s") from None
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_sigterm_ends_a_forked_child_as_by_default_and_raises_only_in_the_owner():
    done = run_fresh(FORKED_CHILD_SIGTERM, timeout=60)
    assert done.returncode == 0, done.stderr
    # killed by the signal (-15), not exit status 143 from Terminated or still alive (None)
    assert done.stdout.split("\n")[:2] == [f"child {-signal.SIGTERM}", f"owner {128 + signal.SIGTERM}"]


def test_forked_children_never_run_with_the_guards_handler_nor_with_sigterm_blocked():
    done = run_fresh(CHILD_HANDLER, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"] * 4


def test_fork_pools_under_load_never_hang_inside_the_guard():
    done = run_fresh(POOLS_UNDER_LOAD, timeout=STRESS_SECONDS + STRESS_MARGIN_S)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 0

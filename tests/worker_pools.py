"""How the tests start nnU-Net's worker pools: forked, except in the tests marked ``real_spawn``.

nnU-Net starts every pool it uses (fingerprinting, preprocessing, the export of a validation, prediction, evaluation,
postprocessing) with the 'spawn' method: each worker is a new interpreter that imports torch and nnU-Net again, three
to five seconds of one core for a pool of one worker on a few tiny cases, over a hundred times in the suite. Here those
pools are started with 'fork' instead: a worker inherits the libraries already imported, and nothing else changes
(pool tasks, their arguments and their results are pickled as before). This applies in the test workers and in the
commands that ``fresh_process.run_fresh`` runs, and in the Python commands of a shell script run with
:func:`subprocess_env`; other ``subprocess.run`` commands keep nnU-Net's own choice. So does a process
in which another thread works (a non-daemon thread, e.g. a ThreadPoolExecutor's): a fork copies only the calling
thread, and a lock that the other one holds at that moment (an import's, a logger's) stays held in the child forever.
Daemon threads (tqdm's monitor, multiprocessing's resource sharer) do not stop a fork: pool workers never take their
locks.

What only a spawned worker shows, what it must import by itself (our normalisation scheme's registration, see
``nnunet_ext/preprocessing/registration.py``), is checked by the tests marked ``real_spawn``: planning and
preprocessing (``test_planning``) and ``nnUNetv2_predict`` on our trainer. Processes that our own code spawns (the
demo's folds) stay spawned.

A forked child must not enter an OpenMP parallel region of the thread pool its parent left behind (libgomp then waits
forever for threads that the fork did not copy), so each child forked here drops to one torch thread first, as
PyTorch's own DataLoader workers do.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
from pathlib import Path
from typing import Dict, Iterator, Mapping

#: The package whose 'spawn' pools are meant: our own code's spawned processes stay spawned.
NNUNET_PACKAGE = "nnunetv2."
#: How nnU-Net's 'spawn' pools start: "fork" (the tests' default) or "spawn" (nnU-Net's own, ``real_spawn`` tests).
FORK, SPAWN = "fork", "spawn"
_start = FORK
_real_get_context = multiprocessing.get_context
_installed = False
#: The folder whose ``sitecustomize`` installs this module in every interpreter that has it on its ``PYTHONPATH``.
SITE_FOLDER = Path(__file__).resolve().parent / "pools_by_fork"


def current() -> str:
    """The start method that nnU-Net's 'spawn' pools get now."""
    return _start


def _no_other_working_thread() -> bool:
    return all(thread.daemon for thread in threading.enumerate() if thread is not threading.current_thread())


def _called_by_nnunet() -> bool:
    # the caller of multiprocessing.get_context, two frames up: ours (the demo's fold processes) keep their spawn
    return sys._getframe(2).f_globals.get("__name__", "").startswith(NNUNET_PACKAGE)


def _get_context(method=None):
    if method == SPAWN and _called_by_nnunet() and _no_other_working_thread():
        method = _start
    return _real_get_context(method)


def _one_torch_thread() -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def install(start: str = FORK) -> None:
    """From now on in this process, nnU-Net's 'spawn' pools start by ``start``. Idempotent."""
    global _installed, _start
    _start = start
    if not _installed:
        multiprocessing.get_context = _get_context  # nnU-Net looks the function up on the module at each call
        os.register_at_fork(after_in_child=_one_torch_thread)
        _installed = True


def subprocess_env(env: Mapping[str, str]) -> Dict[str, str]:
    """``env`` for a subprocess whose Python interpreters start nnU-Net's pools as this process does now: with
    ``pools_by_fork/`` first on their ``PYTHONPATH`` (its ``sitecustomize`` installs this module there)."""
    if _start != FORK:
        return dict(env)
    path = [str(SITE_FOLDER), *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "PYTHONPATH": os.pathsep.join(path)}


@contextlib.contextmanager
def started_by(start: str) -> Iterator[None]:
    """Within the block, nnU-Net's 'spawn' pools start by ``start``; the previous method afterwards."""
    global _start
    previous, _start = _start, start
    try:
        yield
    finally:
        _start = previous

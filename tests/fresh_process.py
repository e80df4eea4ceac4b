"""Run a command in a process of its own, as ``subprocess.run`` does, without paying the libraries' start-up each time.

Every console script of ours and nnU-Net's imports torch, torch._dynamo, SciPy, seaborn and the like: about five
seconds of one core before the first line of our code runs, the bulk of a test that checks a refusal. Here a
*zygote* process imports those libraries once; each command then runs in a child forked from it, with the command's
own argument list, environment (the whole of it, as ``subprocess.run(env=...)`` sets it), working folder, stdin
closed, stdout and stderr captured, and its own exit status and process group. The child ends as a script ends (its
threads joined, its atexit functions run, its output flushed), without freeing the inherited libraries object by
object. What the child shares with the zygote is only those imported libraries: neither nnU-Net nor nnunet_ext is
imported before the fork (nnU-Net reads ``nnUNet_def_n_proc`` when it is imported, and a refusal must come from the
code the command itself loads). What a library reads from the environment while it loads (e.g. ``OMP_NUM_THREADS``)
is the zygote's: the test worker's, as for a subprocess. nnU-Net's worker pools start in the child as in the test
that runs the command (``worker_pools``).

Commands, as for ``subprocess.run``: an installed console script (its path or name: its entry point is loaded and
called, as the generated script does), ``[sys.executable, "script.py", ...]`` or ``[sys.executable, "-c", code, ...]``.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

import worker_pools

#: Imported once by each zygote: the third-party libraries behind most of a command's start-up.
PRELOADED = ("torch", "torch._dynamo", "numpy", "scipy.stats", "seaborn", "pandas", "SimpleITK", "nibabel", "blosc2",
             "sklearn.metrics", "skimage.morphology", "matplotlib.pyplot", "acvl_utils",
             "batchgeneratorsv2.transforms.spatial.spatial", "dynamic_network_architectures.architectures.unet")
#: Packages the child must import itself, under the command's environment.
NOT_PRELOADED = ("nnunetv2", "nnunet_ext")
#: This folder, where the zygote finds ``worker_pools``.
TESTS = Path(__file__).resolve().parent
#: Zygotes kept per test worker: commands run side by side up to this many.
MAX_ZYGOTES = 4

ZYGOTE = r"""
import atexit, importlib, importlib.metadata, json, os, runpy, signal, sys, threading, time
sys.path.insert(0, sys.argv[3])
import worker_pools
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[2]))
assert not loaded, f"a preloaded library imported {loaded}"
requests, replies = sys.stdin.buffer, sys.stdout


def run_command(argv):
    if os.path.basename(argv[0]) == os.path.basename(sys.executable) and argv[1:2] == ["-c"]:
        sys.argv = ["-c", *argv[3:]]
        exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__"})
    elif os.path.basename(argv[0]) == os.path.basename(sys.executable):
        sys.argv = argv[1:]
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[1])))
        runpy.run_path(argv[1], run_name="__main__")
    else:
        sys.argv = list(argv)
        (entry,) = importlib.metadata.entry_points(group="console_scripts", name=os.path.basename(argv[0]))
        sys.exit(entry.load()())


def child(request):
    os.setsid()  # the command's own process group: a timeout ends it and whatever it started
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    worker_pools.install(request["pool_start"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                            (2, request["stderr"], os.O_WRONLY)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    try:
        run_command(request["argv"])
        status = 0
    except SystemExit as stop:  # the status the interpreter makes of it
        status = 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
        if not isinstance(stop.code, (int, type(None))):
            print(stop.code, file=sys.stderr)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        status = 1
    end(status)


def end(status):
    # What the interpreter does when a script ends (wait for its threads, run the atexit functions, flush), short of
    # freeing every object: with the zygote's libraries inherited, that alone takes about 1.7 s of one core.
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


def wait(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        time.sleep(0.02)
    os.killpg(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), True


for line in requests:
    request = json.loads(line)
    replies.flush()
    pid = os.fork()
    if pid == 0:
        child(request)
    returncode, timed_out = wait(pid, request["timeout"])
    replies.write(json.dumps({"returncode": returncode, "timed_out": timed_out}) + "\n")
    replies.flush()
"""


class Zygote:
    """One zygote process (see the module docstring); runs one command at a time."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", ZYGOTE, json.dumps(PRELOADED),
                                         json.dumps(NOT_PRELOADED), str(TESTS)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.folder = tempfile.TemporaryDirectory(prefix="fresh_process_")

    def run(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float
            ) -> subprocess.CompletedProcess:
        stdout, stderr = Path(self.folder.name) / "stdout", Path(self.folder.name) / "stderr"
        for path in (stdout, stderr):
            path.write_bytes(b"")
        request = {"argv": [str(a) for a in argv], "env": dict(env), "cwd": str(cwd), "timeout": timeout,
                   "stdout": str(stdout), "stderr": str(stderr), "pool_start": worker_pools.current()}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError(f"the zygote ended (status {self.process.poll()}) before running {list(argv)}")
        outcome = json.loads(reply)
        out, err = stdout.read_text(errors="replace"), stderr.read_text(errors="replace")
        if outcome["timed_out"]:
            raise subprocess.TimeoutExpired(list(argv), timeout, out, err)
        return subprocess.CompletedProcess(list(argv), outcome["returncode"], out, err)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()
        self.folder.cleanup()


_idle: "queue.LifoQueue[Zygote]" = queue.LifoQueue()
_started: List[Zygote] = []
_starting = threading.Lock()


def run_fresh(argv: Sequence[str], env: Optional[Mapping[str, str]] = None, cwd: Optional[Path] = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, env=env, cwd=cwd, timeout=timeout, capture_output=True, text=True)``, the command
    forked from a zygote (see the module docstring). Thread-safe: up to :data:`MAX_ZYGOTES` commands at a time."""
    try:
        zygote = _idle.get_nowait()
    except queue.Empty:
        with _starting:
            start = len(_started) < MAX_ZYGOTES
            if start:
                zygote = Zygote()
                _started.append(zygote)
        if not start:
            zygote = _idle.get()
    try:
        return zygote.run(argv, os.environ if env is None else env, Path.cwd() if cwd is None else cwd, timeout)
    finally:
        _idle.put(zygote)


@atexit.register
def close_all() -> None:
    """End every zygote of this process (when the test worker ends)."""
    while _started:
        _started.pop().close()

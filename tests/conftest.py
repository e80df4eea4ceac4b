"""Shared fixtures: nnU-Net folders in tmp_path, tiny hand-made FOMO trees, and synthetic FOMO data per task."""

from __future__ import annotations

import importlib.metadata
import multiprocessing
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List

# Before any library starts OpenMP, here and in every process the tests start: an idle OpenMP thread sleeps instead
# of spinning. The benchmarks' smoke runs train on every core, as nnUNetv2_train does, while the other xdist worker
# runs too; spinning threads of two such processes then took a core from each other's working threads (two of them
# side by side: 41 s each, 16 s with passive waiting).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import worker_pools  # noqa: E402
from fomo_files import FomoTree  # noqa: E402

from nnunet_ext.dataset_conversion.synthetic import make_synthetic_dataset  # noqa: E402

#: Small enough for 2 shared CPU cores, large enough for nnU-Net's integrity check and planning.
SYNTHETIC_SHAPE = (32, 32, 24)
SYNTHETIC_CASES = 12
NNUNET_ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: Seconds a child process left behind by a failed test gets to end after SIGTERM, before SIGKILL.
CHILD_TERMINATE_GRACE_S = 5
GIB = 2 ** 30


def machine_facts() -> List[str]:
    """The machine facts behind failures seen on one machine only (e.g. CI): cores, free space, versions and any
    nnU-Net variable already set in the environment (the tests set their own)."""
    import torch

    free = {folder: shutil.disk_usage(folder).free / GIB for folder in (tempfile.gettempdir(), "/dev/shm")
            if os.path.isdir(folder)}
    inherited = sorted(name for name in os.environ if name.startswith("nnUNet"))
    return [f"nnunet_ext: python {sys.version.split()[0]}, torch {torch.__version__}, "
            f"nnunetv2 {importlib.metadata.version('nnunetv2')}, {len(os.sched_getaffinity(0))} usable core(s)",
            "free space: " + ", ".join(f"{folder} {gib:.1f} GiB" for folder, gib in free.items()),
            f"nnU-Net variables inherited: {inherited or 'none'}"]


def pytest_configure(config: pytest.Config) -> None:
    """nnU-Net's worker pools start by fork (``worker_pools``). Under pytest-xdist (``-n N``), each worker gets its share of the cores, for its own torch and for the
    processes its tests start: N workers on N cores, each on one thread, finish sooner than N workers all asking
    for every core (OpenMP threads then wait on each other)."""
    worker_pools.install(worker_pools.FORK)
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers is None:
        return
    import torch

    threads = max(1, len(os.sched_getaffinity(0)) // int(workers))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Print :func:`machine_facts` first, even under ``-q`` (which hides pytest's own header)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in machine_facts():
        reporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """End worker processes that a failed training left running (nnU-Net's augmentation workers are not daemons):
    the interpreter would otherwise wait for them at exit and the run would never end."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(CHILD_TERMINATE_GRACE_S)
        if child.is_alive():
            child.kill()


def _pool_start(node: pytest.Item) -> str:
    return worker_pools.SPAWN if node.get_closest_marker("real_spawn") else worker_pools.FORK


@pytest.fixture(scope="module", autouse=True)
def module_pool_start(request: pytest.FixtureRequest) -> Iterator[None]:
    """nnU-Net's own 'spawn' pools in the module fixtures of a module marked ``real_spawn``."""
    with worker_pools.started_by(_pool_start(request.node)):
        yield


@pytest.fixture(autouse=True)
def pool_start(request: pytest.FixtureRequest) -> Iterator[None]:
    """nnU-Net's own 'spawn' pools in a test marked ``real_spawn`` (or in a module so marked)."""
    with worker_pools.started_by(_pool_start(request.node)):
        yield


@pytest.fixture
def nnunet_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dict[str, Path]:
    """nnU-Net's three folders under tmp_path, exported; nnU-Net limited to one worker process."""
    dirs = {}
    for var in NNUNET_ENV:
        dirs[var] = tmp_path / var
        dirs[var].mkdir()
        monkeypatch.setenv(var, str(dirs[var]))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    return dirs


@pytest.fixture
def fomo_tree(tmp_path: Path) -> Callable[[int], FomoTree]:
    """Factory: ``fomo_tree(task_id)`` -> an empty :class:`FomoTree` under tmp_path/fomo-task<id>."""
    return lambda task_id: FomoTree(tmp_path / f"fomo-task{task_id}", task_id)


@pytest.fixture(scope="session")
def synthetic_fomo(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """Factory: ``synthetic_fomo(task_id)`` -> a small synthetic FOMO task folder, generated once per session."""
    made: Dict[int, Path] = {}

    def get(task_id: int) -> Path:
        if task_id not in made:
            out = tmp_path_factory.mktemp(f"synthetic_task{task_id}")
            made[task_id] = make_synthetic_dataset(task_id, out, n_cases=SYNTHETIC_CASES, seed=0, shape=SYNTHETIC_SHAPE)
        return made[task_id]

    return get


# --- Trained models for the prediction / evaluation / model-selection / container tests ---------------------------


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory):
    """Factory: ``trained_model(task_type)`` -> a two-fold ``_debug`` model with a test set, trained once per session,
    pytest-xdist workers included (see ``trained_models.py``)."""
    from trained_models import TrainedModel, trained_once

    made: Dict[str, TrainedModel] = {}

    def get(task_type: str) -> TrainedModel:
        if task_type not in made:
            made[task_type] = trained_once(task_type, tmp_path_factory)
        return made[task_type]

    return get

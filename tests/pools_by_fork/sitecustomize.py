"""Imported at start-up by every Python interpreter that finds this folder on its ``PYTHONPATH``
(``worker_pools.subprocess_env``): a test that runs a shell script, whose Python commands ``fresh_process`` cannot
fork, has nnU-Net's worker pools start there as in the test workers (see ``worker_pools``)."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("worker_pools", Path(__file__).resolve().parents[1] / "worker_pools.py")
_worker_pools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_worker_pools)
_worker_pools.install(_worker_pools.FORK)

"""Training on the CPU keeps freed memory in the process: after the first steps, a training step faults no pages in
(glibc would otherwise unmap every large activation when it is freed and fault it in again at the next step).
Measured with ``benchmarks/cpu_memory.py``'s own step loop, each mode in a fresh process."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cpu_memory import run_mode  # noqa: E402

#: How many times fewer page faults per step the retained memory must give (measured: about 100x; a few hundred
#: faults per step remain, from the interpreter and the threads' own stacks).
MIN_FAULT_REDUCTION = 10
STEPS, FILTERS, SHAPE = 2, 8, (48, 48, 32)


def test_training_steps_fault_far_fewer_pages_in_once_freed_memory_is_retained():
    default = run_mode("default", STEPS, FILTERS, SHAPE)["minor_faults_per_step"]
    retained = run_mode("retain", STEPS, FILTERS, SHAPE)["minor_faults_per_step"]
    assert retained * MIN_FAULT_REDUCTION < default, (retained, default)

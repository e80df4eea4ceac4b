"""Training on the CPU keeps freed memory in the process: after the first steps, a training step faults no pages in
(glibc would otherwise unmap every large activation when it is freed and fault it in again at the next step).
Measured with ``benchmarks/cpu_memory.py``'s own step loop, each mode in a fresh process."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cpu_memory import run_mode  # noqa: E402

#: Page faults per step allowed with the memory retained; the same steps fault tens of thousands of pages in without.
MAX_FAULTS_PER_STEP_RETAINED = 100
STEPS, FILTERS, SHAPE = 3, 16, (48, 48, 32)


def test_training_steps_fault_no_pages_in_once_freed_memory_is_retained():
    assert run_mode("default", STEPS, FILTERS, SHAPE)["minor_faults_per_step"] > 10 * MAX_FAULTS_PER_STEP_RETAINED
    assert run_mode("retain", STEPS, FILTERS, SHAPE)["minor_faults_per_step"] < MAX_FAULTS_PER_STEP_RETAINED

"""Training on the CPU keeps freed memory in the process: after the first steps, a training step faults no pages in
(glibc would otherwise unmap every large activation when it is freed and fault it in again at the next step).
Measured with ``benchmarks/cpu_memory.py``'s own step loop, each mode in a process of its own."""

from __future__ import annotations

import sys
from pathlib import Path

from fresh_process import run_fresh

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cpu_memory import mode_command, mode_result  # noqa: E402

#: How many times fewer page faults per step the retained memory must give (measured: default 386,551, retained 0;
#: a few hundred faults can remain, from the interpreter and the threads' own stacks).
MIN_FAULT_REDUCTION = 10
#: Activations of 4 x 128 x 128 x 80 float32 voxels per case, batch 2: 42 MB, above the largest threshold (32 MiB)
#: to which glibc raises its mmap threshold by itself, so that its default unmaps them at every step whatever the
#: threads and the earlier allocations of the process (smaller ones it may come to keep on its own).
STEPS, FILTERS, SHAPE = 1, 4, (128, 128, 80)


def faults_per_step(mode: str) -> float:
    done = run_fresh(mode_command(mode, STEPS, FILTERS, SHAPE))
    assert done.returncode == 0, done.stderr[-3000:]
    return mode_result(done.stdout)["minor_faults_per_step"]


def test_training_steps_fault_far_fewer_pages_in_once_freed_memory_is_retained():
    default, retained = faults_per_step("default"), faults_per_step("retain")
    assert retained * MIN_FAULT_REDUCTION < default, (retained, default)

"""Training on the CPU: keep freed memory inside the process instead of handing it back to the kernel at every step.

glibc's malloc serves large blocks (a 3D activation is tens to hundreds of MB) with ``mmap`` and returns them with
``munmap`` when freed, and trims the top of its heap back to the kernel; a training step frees and re-allocates the
same activations, so every step faults all of them in again, page by page, zeroed by the kernel. On the IXI brain
age runs that was 22 of 63 CPU minutes of system time. With ``mmap`` off and trimming at a high threshold the
blocks stay in the heap and are reused (``benchmarks/README.md``: steps per second with and without).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: Free memory at the top of the heap kept before glibc trims it: above a whole-brain step's activations.
TRIM_THRESHOLD_BYTES = 1 << 30
_applied = False


def retain_freed_memory() -> bool:
    """Configure this process's malloc as the module docstring says, once; False where the C library is not glibc
    (its ``mallopt`` is missing or refuses), which then keeps its own behaviour."""
    global _applied
    if _applied:
        return True
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no mallopt in the C library (%s): freed memory is handled as by default", name)
        return False
    _applied = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return _applied

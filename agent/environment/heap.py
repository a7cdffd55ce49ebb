"""Keep glibc's heap pages between training steps (CPU training on Linux).

glibc returns freed memory to the system when the heap's free top grows past a
trim threshold, and serves large blocks by ``mmap``; both thresholds adapt to
the largest block freed so far. A tracked step allocates and frees a few more
megabytes than a plain one (captured inputs, kept per-sample gradients), which
is enough to tip the heap into trimming: the training step's own tensors (conv
outputs, gradients) are then faulted in and zeroed by the kernel again on every
step. Measured on the benchmark CNN (batch 64, one thread, ``python -m
bench.page_faults``): 600–3,000 page faults and 1–5 ms of system time per economy
step, and 550–2,200 faults per plain step without the agent, varying from one
process to the next; with the thresholds fixed, ~0 (docs/benchmarks-agent.md).

``keep_heap`` fixes them once per process at the values the adaptive rule would
reach anyway (blocks up to 32 MiB from the heap) and lets up to ``TRIM_BYTES`` of
free heap stay mapped: memory a training loop reuses every step. It changes the
whole process's allocator, untracked steps included, so it is announced in the
run's metadata and can be declined with ``GLASSCOCKPIT_KEEP_HEAP=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading

from glasscockpit.agent.lifecycle.config import ENV_KEEP_HEAP

#: Blocks from this size on are mapped on their own (glibc's adaptive maximum).
MMAP_BYTES = 32 << 20
#: Free heap top kept mapped before glibc returns it to the system.
TRIM_BYTES = 512 << 20

_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3

_lock = threading.Lock()
_state: str | None = None


def keep_heap() -> str:
    """Fix glibc's trim and mmap thresholds (once per process); what was done.

    Returns a short description for the run's metadata: the values set, or why
    nothing was (declined, not glibc, ``mallopt`` refused).
    """
    global _state
    with _lock:
        if _state is None:
            _state = _apply()
        return _state


def _apply() -> str:
    if os.environ.get(ENV_KEEP_HEAP, "").strip().lower() in ("0", "no", "off"):
        return f"unchanged ({ENV_KEEP_HEAP}=0)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "unchanged (not glibc)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "unchanged (no mallopt)"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # The mmap threshold first: setting either one stops the adaptive rule.
    if not mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES):
        return "unchanged (mallopt refused)"
    mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES)
    mib = MMAP_BYTES >> 20, TRIM_BYTES >> 20
    return f"kept (glibc mmap threshold {mib[0]} MiB, trim {mib[1]} MiB)"

"""Keep freed host memory in the process for reuse, so that a CPU training step stops paying for page faults.

Why: glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with fresh pages from the
kernel and hands them back on `free`, and gives back the top of its heap once more than the trim threshold is
free there. A training step allocates and frees the same large tensors every step (at GPT-2's size the tied
embedding's gradient alone is 50,257 x 768 fp32 = 154 MB; then the activations and the loss's chunk buffers), so
every step first-touches hundreds of MB again: page faults, pages zeroed by the kernel, system time instead of
GEMMs. `retain_freed_memory()` sets glibc (mallopt) to serve every block from its heap and to keep what is freed
there, so the next step reuses the same pages. On the 2-core CPU the gpt2-shape fp32 step went from 5.7 to 4.9 s
(`benchmarks/train_step.py`).

The price is that the process's resident memory stays at its peak instead of shrinking between steps: right for
a training process, whose peak recurs every step (jemalloc and tcmalloc, which Intel recommends preloading for CPU
training, make the same trade). The heap does not settle at once: torch's aligned blocks do not always fit the
holes the last step left, so it grows now and then, by a bounded amount (tests/test_hostmem.py: all growth after
the first step adds up to a step's worth or so, 240 MB at most for a step of 200 MB). The trainer applies it on
CPU unless `--retain-host-memory false`.
Linux with glibc only; elsewhere it does nothing. This module knows nothing of models or training.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: give back only a free heap top of 2 GiB or more
_TOP_PAD = 64 << 20  # grow the heap 64 MiB past each request: fewer brk calls while it reaches its peak

_applied = False


def retain_freed_memory() -> bool:
    """Serve every allocation from malloc's heap and keep freed blocks there (process-wide, for good).

    Returns whether the policy is in force: True once applied, False where the C library is not glibc."""
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success; setting any of these also stops glibc's dynamic mmap threshold
    ok = all(
        libc.mallopt(param, value) == 1
        for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD))
    )
    _applied = ok
    return ok


def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (musl and others have no such mallopt)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc

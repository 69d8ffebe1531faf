"""Process-wide settings that the command line (and the benchmarks) apply before any model work.

:func:`keep_freed_memory`: glibc's malloc serves every block above its mmap threshold (at most 32 MB) with a fresh
``mmap`` and unmaps it on ``free``, so each forward pass of a ResNet on a CPU page-faults its large activations anew:
about 300,000 faults and a fifth of the CPU time in the kernel per RN50 batch of 16 at 224 px, and timings that
wander with the kernel's work. Serving them from the heap and keeping up to 2 GB of freed memory in it makes
every pass after the first reuse the same pages (RN50, batch 16, 2-core CPU: 2.5-3.4 s -> 2.2-2.4 s).
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # mallopt parameters, <malloc.h>
_TRIM_THRESHOLD = (1 << 31) - 1  # freed memory kept at the heap's top before it is returned (mallopt takes an int)
_TOP_PAD = 1 << 28  # extra memory requested from the kernel each time the heap grows
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_",
                 "GLIBC_TUNABLES", "LD_PRELOAD")


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse instead of unmapping it (see the module docstring).

    Applies ``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, 2 GB)`` and ``mallopt(M_TOP_PAD, 256 MB)`` to
    this process (DataLoader workers forked later inherit them). Nothing is done, and False returned, where the
    C library is not glibc, where the user already chose malloc settings or another allocator (any of
    :data:`USER_SETTINGS` in the environment), or where ``SEGCLIP_ALLOCATOR=default``. The price: a process keeps
    up to 2 GB it no longer uses until it exits (its peak memory is unchanged).

    Returns:
        True if the settings were applied.
    """
    if not sys.platform.startswith("linux") or os.environ.get("SEGCLIP_ALLOCATOR", "") == "default":
        return False
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(None)
        gnu_version = libc.gnu_get_libc_version  # glibc only (musl has no mallopt tunables of this kind)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    gnu_version.restype = ctypes.c_char_p
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = all(mallopt(option, value) == 1 for option, value in
                  ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD)))
    log.debug("glibc %s malloc keeps freed memory: %s", gnu_version().decode(), applied)
    return applied

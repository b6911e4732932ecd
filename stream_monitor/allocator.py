"""glibc's malloc, tuned for a worker that runs for days: two arenas, a fixed mmap threshold.

Why (measured in the soak, RELIABILITY.md "Memory"): with glibc's defaults a worker's RSS
rose by about a third over 25 minutes, without a leak. Python's own objects stayed flat
(tracemalloc, ``gc`` counts); what grew was memory glibc had been given back by ``free`` and
kept: ``malloc_info`` showed 357 of 651 MiB in its arenas free, and ``malloc_trim(0)`` gave
317 MiB back to the kernel at once (which the next 20 s of work took again). Two defaults
cause it:

- **arenas**: every new thread (a decode thread per stream session, PyTorch's and ONNX
  Runtime's pools, the asyncio executor) gets its own arena, up to 8 per core, and each keeps
  the free holes of its own peak;
- **the dynamic mmap threshold**: a freed mmapped block (a decoded picture, a detector's input
  tensor) raises the threshold up to 32 MiB, after which such blocks come from the arenas and
  fragment them instead of going back to the kernel on ``free``.

:func:`tune_allocator` sets ``M_ARENA_MAX`` to :data:`ARENAS` and ``M_MMAP_THRESHOLD`` to
:data:`MMAP_THRESHOLD` (a fixed value also fixes the trim threshold) with ``mallopt``, early
in the CLI, before the threads start. The same 7-minute soak plan, run back to back: +2.0 %
instead of +6.4 % RSS growth, 161 MiB less at the end (RELIABILITY.md). What a load peak
left allocated after that was oneDNN's kernels for new batch sizes, which
:mod:`stream_monitor.batch_sizes` bounds.

The operator's word wins: when the environment already sets glibc's malloc (``MALLOC_*``
variables or ``glibc.malloc`` tunables), or ``STREAM_MONITOR_MALLOC=default``, nothing is
changed. Not glibc (musl, macOS): nothing to do.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from typing import Mapping

log = logging.getLogger(__name__)

# mallopt parameter numbers (glibc <malloc.h>).
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 256 * 1024  # bytes; blocks this size and larger are mmapped and unmapped on free
OPT_OUT = "STREAM_MONITOR_MALLOC"


def operator_setting(environ: Mapping[str, str]) -> str | None:
    """The environment variable by which the operator already chose malloc's settings, if any."""
    if environ.get(OPT_OUT, "").strip().lower() == "default":
        return OPT_OUT
    for name in sorted(environ):
        if name.startswith("MALLOC_") or (name == "GLIBC_TUNABLES" and "glibc.malloc." in environ[name]):
            return name
    return None


def tune_allocator(environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """Apply :data:`ARENAS` and :data:`MMAP_THRESHOLD` to this process's glibc malloc.

    Returns the settings applied (``{"arena_max": 2, "mmap_threshold": 262144}``), or ``{}``
    when the C library is not glibc or the operator set malloc up (:func:`operator_setting`).
    Call it once, early: arenas already handed to running threads stay theirs.
    """
    if platform.libc_ver()[0] != "glibc":
        return {}
    chosen = operator_setting(environ)
    if chosen is not None:
        log.debug("malloc left as set by %s", chosen)
        return {}
    # glibc's soname on every Linux architecture; find_library would run ldconfig for it.
    libc = ctypes.CDLL("libc.so.6")
    applied: dict[str, int] = {}
    for name, param, value in (("arena_max", M_ARENA_MAX, ARENAS), ("mmap_threshold", M_MMAP_THRESHOLD,
                                                                    MMAP_THRESHOLD)):
        if libc.mallopt(param, value) == 1:  # mallopt returns 1 on success
            applied[name] = value
        else:
            log.warning("mallopt(%s=%d) was refused; glibc's default stays", name, value)
    return applied

"""Keep freed memory in the process on glibc, so that training steps stop paying for page faults.

glibc's ``malloc`` hands every block above its mmap threshold (at most 32 MiB) to the kernel on
``free`` and maps fresh, zero-filled pages for the next one. A CPU training step allocates and
frees the same large activations and gradients every step, so each step touches tens of
thousands of new pages: measured on a 2-core VM (``benchmarks/bench_quickstart.py`` and
``MALLOC_MMAP_MAX_=0`` runs of ``benchmarks/bench_model.py``), a B0 training step took 1.1-1.6x
longer with the default settings (align_hf's fast path at the low end, transformers' model at
the high end), the quickstart's step 1.15x. Turning mmap off for large blocks and raising the trim
threshold keeps the freed blocks in the heap for reuse, which is what tcmalloc/jemalloc (the
allocators PyTorch's CPU tuning guide suggests preloading) do without a preload. The price is
that the process keeps its peak heap until it exits, which a training or embedding job does
anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # the largest value the C int takes: trim only past 2 GiB of free heap top

OPT_OUT = "ALIGN_HF_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks for reuse (see the module docstring); returns whether it did.

    A no-op (False) off Linux, on a C library other than glibc, or when the environment sets
    ``ALIGN_HF_KEEP_FREED_MEMORY=0``. Safe to call more than once; the setting lasts for the
    process and is inherited by forked data-loader workers.
    """
    if sys.platform != "linux" or os.environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


__all__ = ["keep_freed_memory", "OPT_OUT"]

"""glibc allocator settings for the gateway and the agent (their data path).

Their hot buffers are 256 KiB to 1 MiB (reads, tunnel frames, WebSocket messages), right
above glibc's initial 128 KiB mmap threshold; with the defaults, pieces of a big answer
were mapped, page-faulted and unmapped or trimmed again and again (`perf` found page
faults and their zero-filling in the gateway's samples). Serving them from the heap and
keeping up to 8 MiB of freed heap for the next ones streams a 100 MB LIST faster; a
fixed 128 KiB threshold had cost far more CPU (docs/design.md section 9, "glibc's mmap
threshold", has the measurements).
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment still win.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
import sys
from typing import Any

MMAP_THRESHOLD_BYTES = 1024 * 1024
TRIM_THRESHOLD_BYTES = 8 * 1024 * 1024

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune() -> bool:
    """Apply the settings (glibc only, unless the environment sets them); True if done."""
    if not sys.platform.startswith("linux"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt)
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mapped: int = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    trimmed: int = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    return mapped == 1 and trimmed == 1


RETURN_AFTER_BYTES = 8 * 1024 * 1024
"""A close that freed this much gives the memory back to the system (``freed``)."""
RETURN_DELAY_S = 1.0

_state: dict[str, Any] = {"trim": None, "scheduled": False}


def freed(size: int) -> None:
    """``size`` bytes were just let go (a tunnel or a connection that held a flood of
    buffered bytes closed): 1 s later, collect and give free heap pages back to the
    system. The heap keeps what a flood grew it to otherwise: freed pieces of 64 KiB to
    1 MiB sit between live ones, out of reach of the trim at the top (docs/design.md
    section 3, "The asyncio layer", has what a flood left behind with and without this).
    At most once per second."""
    if size < RETURN_AFTER_BYTES or _state["scheduled"]:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    _state["scheduled"] = True
    loop.call_later(RETURN_DELAY_S, _give_back)


def _give_back() -> None:
    _state["scheduled"] = False
    gc.collect()
    if _state["trim"] is None:
        _state["trim"] = _malloc_trim()
    if _state["trim"]:
        _state["trim"](0)


def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` (False where there is none: musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return trim

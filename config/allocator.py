"""glibc's malloc, set for a server whose connections come and go.

uvloop gives every TLS connection a 256 KiB read buffer from ``malloc``, of which an idle
connection touches a page or two. glibc serves blocks that large with ``mmap`` only until
the first such block is freed; then it raises its mmap threshold (up to 32 MiB) and
serves them from the heap, where later buffers land on pages earlier connections already
wrote: measured on this project's machine, 5,000 idle TLS connections cost 23.5 KiB each
on a fresh process and 47-64 KiB each after a few rounds of connections closing and
opening, unless the threshold stays fixed at 128 KiB (then 24.3-24.6 KiB; each buffer
keeps one resident page). Fixing it costs an ``mmap``/``munmap`` per block of 128 KiB or
more, which on the hot path happens once per connection.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024
ENV = "MALLOC_MMAP_THRESHOLD_"
"""glibc's own variable: when it is set, glibc has applied it and we leave it alone."""


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Keep blocks of ``threshold`` bytes and more in their own mappings. True if set."""
    if os.environ.get(ENV):
        return False
    try:
        libc_version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        libc_version = None
    if not libc_version:
        return False  # not glibc (musl, macOS): nothing to fix
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        ok = False
    if not ok:
        logger.debug("mallopt(M_MMAP_THRESHOLD) was refused")
    return ok

"""config.allocator: blocks of 128 KiB and more stay in their own mappings."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from config import allocator

PROBE = r"""
import ctypes, sys
from config.allocator import fix_mmap_threshold
if sys.argv[1] == "fix":
    assert fix_mmap_threshold()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 256 * 1024
first = libc.malloc(size)
libc.free(first)  # glibc now raises its threshold, unless it is fixed
second = libc.malloc(size)
for line in open("/proc/self/maps"):
    span, rest = line.split(" ", 1)
    low, high = (int(x, 16) for x in span.split("-"))
    if low <= second < high:
        print("heap" if "[heap]" in rest else "own mapping")
        break
"""


def _where(mode: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != allocator.ENV}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True
    )
    return out.stdout.strip()


def test_a_freed_large_block_does_not_move_later_ones_to_the_heap() -> None:
    # Linux with glibc, as on every machine herdgate supports.
    assert _where("default") == "heap"  # what the fix is for
    assert _where("fix") == "own mapping"


def test_glibc_own_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(allocator.ENV, "65536")
    assert allocator.fix_mmap_threshold() is False

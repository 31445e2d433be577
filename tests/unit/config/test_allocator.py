"""The allocator settings reach glibc, and the environment's own settings win."""

from __future__ import annotations

import subprocess
import sys

import pytest

# How many of eight 512 KiB blocks glibc mmapped (mallinfo2().hblks before and after).
COUNT_MAPPED = """
import ctypes, sys
from config import allocator
done = allocator.tune() if sys.argv[1] == "tune" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
before = libc.mallinfo2().hblks
blocks = [libc.malloc(512 * 1024) for _ in range(8)]
print(done, libc.mallinfo2().hblks - before)
"""


def run(mode: str, env: dict[str, str] | None = None) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", COUNT_MAPPED, mode],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_half_mebibyte_blocks_come_from_the_heap() -> None:
    assert run("default") == ["None", "8"]  # glibc's 128 KiB threshold maps each block
    assert run("tune") == ["True", "0"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_environment_wins() -> None:
    assert run("tune", {"MALLOC_MMAP_THRESHOLD_": "131072", "PATH": "/usr/bin:/bin"}) == [
        "False",
        "8",
    ]

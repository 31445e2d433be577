"""What a program printed, without the line a development tree may add to any run."""

from __future__ import annotations

STALE_BUILD = "was built from other sources; running them as Python"
"""config.native's warning when .native/ is older than the sources (never in CI)."""


def error_lines(stderr: str) -> list[str]:
    """The program's own lines on standard error."""
    return [line for line in stderr.splitlines() if STALE_BUILD not in line]

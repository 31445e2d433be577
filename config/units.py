"""Parsing of durations (``90s``, ``16h``, ``30d``) and sizes (``256KiB``) in config files."""

from __future__ import annotations

import re

from config.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}


def parse_duration(value: object, path: str) -> float:
    """Seconds from a number or a string such as ``"250ms"``, ``"10s"``, ``"16h"``, ``"30d"``."""
    if isinstance(value, bool):
        raise ConfigError(path, "expected a duration such as 30s, 16h or 30d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ConfigError(path, f"expected a duration such as 30s, 16h or 30d, got {value!r}")
    if seconds < 0:
        raise ConfigError(path, "a duration cannot be negative")
    return seconds


def parse_size(value: object, path: str) -> int:
    """Bytes from an integer or a string such as ``"256KiB"``."""
    if isinstance(value, bool):
        raise ConfigError(path, "expected a size such as 65536 or 256KiB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    else:
        raise ConfigError(path, f"expected a size such as 65536 or 256KiB, got {value!r}")
    if size < 0:
        raise ConfigError(path, "a size cannot be negative")
    return size

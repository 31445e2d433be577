"""Finding the real programs the tests drive (kubectl, slapd, etcd, nginx, wrk).

A missing program skips its tests on a developer's machine but fails them in CI
(``CI=true``), where every integration test must run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(path: str | None, what: str) -> str:
    """The program's path; skip locally when missing, fail in CI."""
    if path:
        return path
    message = f"{what} is not installed (scripts/test-all installs it)"
    if in_ci():
        pytest.fail(message + "; CI must run every integration test")
    pytest.skip(message)


def kubectl_dirs() -> list[Path]:
    """Where versioned ``kubectl.1.NN`` binaries live: beside the real kubectl on PATH."""
    found = shutil.which("kubectl")
    return [Path(found).resolve().parent] if found else []


def find_kubectl(version: str | None = None) -> str | None:
    """``kubectl.<version>`` (e.g. "1.27"), or the kubectl on PATH for None."""
    if version is None:
        return shutil.which("kubectl")
    for directory in kubectl_dirs():
        candidate = directory / f"kubectl.{version}"
        if candidate.exists():
            return str(candidate)
    return shutil.which(f"kubectl.{version}")


def kubectl(version: str | None = None) -> str:
    return require(find_kubectl(version), f"kubectl {version or ''}".strip())


def system_binary(name: str, *extra_dirs: str) -> str:
    """A daemon such as slapd or nginx, which Debian installs under /usr/sbin."""
    for directory in (*extra_dirs, "/usr/sbin", "/usr/local/sbin"):
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    return require(shutil.which(name), name)

"""The systemd units are valid and hardened."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.binaries import require

UNITS = sorted((Path(__file__).resolve().parents[3] / "systemd").glob("*.service"))
HERDGATE = Path(sys.executable).with_name("herdgate")


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_verifies(unit: Path, tmp_path: Path) -> None:
    analyze = require(shutil.which("systemd-analyze"), "systemd-analyze")
    # Point ExecStart at this checkout's installed script so verify can find it.
    text = unit.read_text().replace("/opt/herdgate/bin/herdgate", str(HERDGATE))
    copy = tmp_path / unit.name
    copy.write_text(text)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, check=False
    )
    problems = [
        line for line in result.stderr.splitlines()
        if unit.name in line and "Failed to" not in line and "not found" not in line.lower()
    ]  # fmt: skip
    assert result.returncode == 0 or not problems, result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_is_hardened(unit: Path) -> None:
    text = unit.read_text()
    for setting in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "DynamicUser=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
    ):
        assert setting in text, f"{unit.name} lacks {setting.strip()}"

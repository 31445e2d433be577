"""The systemd units are valid, hardened, notify systemd (Type=notify, watchdog) and reload."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.binaries import require

UNITS = sorted((Path(__file__).resolve().parents[3] / "systemd").glob("*.service"))
UNITS_BY_NAME = {unit.name: unit for unit in UNITS}
HERDGATE = Path(sys.executable).with_name("herdgate")
MAX_EXPOSURE = 2.5
"""systemd-analyze's "OK" band ends here."""


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
    # verify exits 0 even for a setting it cannot parse ("Failed to parse ..., ignoring"):
    # every line about the unit counts, but for units it orders itself against that this
    # machine does not have (kube-apiserver.service).
    problems = [
        line for line in result.stderr.splitlines()
        if unit.name in line and "not found" not in line.lower()
    ]  # fmt: skip
    assert result.returncode == 0 and not problems, result.stderr


def settings(unit: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit, in order (a key may repeat)."""
    found: dict[str, list[str]] = {}
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def capabilities(values: list[str]) -> set[str]:
    """The set a (possibly repeated, possibly reset) capability setting ends up with."""
    caps: set[str] = set()
    for value in values:
        if not value:
            caps = set()
        else:
            caps |= set(value.split())
    return caps


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_is_hardened(unit: Path) -> None:
    text = unit.read_text()
    for setting in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "DynamicUser=yes",
        "ConfigurationDirectory=herdgate",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",  # AF_UNIX: the notify socket
        "SystemCallFilter=@system-service",
        "Restart=on-failure",
    ):
        assert f"\n{setting}\n" in text, f"{unit.name} lacks {setting}"
    found = settings(unit)
    assert int(found["LimitNOFILE"][-1]) >= 65536
    # CAP_NET_BIND_SERVICE at most, and only what is bounded may be ambient.
    bounding = capabilities(found["CapabilityBoundingSet"])
    assert bounding <= {"CAP_NET_BIND_SERVICE"}, bounding
    assert capabilities(found.get("AmbientCapabilities", [])) <= bounding


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_notifies_systemd(unit: Path) -> None:
    found = settings(unit)
    assert found["Type"] == ["notify"]
    # Only the main process: the gateway's supervisor forwards its workers' state itself.
    assert found["NotifyAccess"] == ["main"]
    assert found["WatchdogSec"] == ["30s"]
    # Every program reloads on SIGHUP (RELOADING=1 ... READY=1); `systemctl reload` sends it.
    assert found["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_gateway_unit() -> None:
    found = settings(UNITS_BY_NAME["herdgate-gateway.service"])
    assert found["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # It binds 443 as a dynamic user, and nothing else.
    assert capabilities(found["CapabilityBoundingSet"]) == {"CAP_NET_BIND_SERVICE"}
    assert capabilities(found["AmbientCapabilities"]) == {"CAP_NET_BIND_SERVICE"}
    # Longer than the 30 s grace period for requests in flight at SIGTERM.
    assert found["TimeoutStopSec"][-1].endswith("s")
    assert int(found["TimeoutStopSec"][-1].removesuffix("s")) > 30
    assert found["StateDirectory"] == ["herdgate"]
    # 10,000 clusters: a tunnel and ~6 internal-socket descriptors each, and the clients.
    assert int(found["LimitNOFILE"][-1]) >= 10_000 * 7 + 32_768


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_security_exposure_is_ok(unit: Path) -> None:
    """`systemd-analyze security` rates each unit 2.5 or lower ("OK"); README lists the scores."""
    analyze = require(shutil.which("systemd-analyze"), "systemd-analyze")
    # --threshold is the exposure level times ten (exits 1 above it).
    result = subprocess.run(
        [analyze, "security", "--offline=true", f"--threshold={MAX_EXPOSURE * 10:.0f}", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr

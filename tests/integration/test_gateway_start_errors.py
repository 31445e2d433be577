"""A gateway that cannot start says why in one line and leaves nothing behind.

Its address (or its metrics address) taken by another program: exit code 1, one line on
standard error, no traceback, no admin password shown (none was created: the next start,
the first that serves, shows it), no socket left in the state directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.env import REPO_ROOT, free_port, wait_until
from tests.integration.output import error_lines

pytestmark = pytest.mark.integration


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _start(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERDGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "herdgate", "gateway", "--state-dir", str(state), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _assert_nothing_left(state: Path) -> None:
    assert not (state / "bootstrap-password").exists()
    left = [p for p in state.rglob("*") if p.is_socket()] if state.exists() else []
    assert left == []


def test_the_address_in_use_is_one_line_and_no_password(tmp_path: Path, taken: int) -> None:
    state = tmp_path / "state"
    done = _start(state, "--listen", f"127.0.0.1:{taken}")
    assert done.returncode == 1, done
    assert error_lines(done.stderr) == [
        f"herdgate gateway: cannot listen on 127.0.0.1:{taken}: address already in use"
    ]
    assert "password" not in done.stdout.lower() and "Traceback" not in done.stdout
    _assert_nothing_left(state)


def test_the_metrics_address_in_use_too(tmp_path: Path, taken: int) -> None:
    state = tmp_path / "state"
    (tmp_path / "gateway.yaml").write_text(f"metrics:\n  listen: 127.0.0.1:{taken}\n")
    done = _start(
        state, "--listen", f"127.0.0.1:{free_port()}", "--config", str(tmp_path / "gateway.yaml")
    )
    assert done.returncode == 1, done
    assert error_lines(done.stderr) == [
        f"herdgate gateway: cannot listen on 127.0.0.1:{taken} (metrics.listen): "
        "address already in use"
    ]
    assert "password" not in done.stdout.lower() and "Traceback" not in done.stdout
    _assert_nothing_left(state)


def test_workers_do_not_start_on_an_address_in_use(tmp_path: Path, taken: int) -> None:
    """With ``workers: 2`` the supervisor finds out first (its workers would fail, be
    started again, and fail, forever)."""
    state = tmp_path / "state"
    done = _start(state, "--listen", f"127.0.0.1:{taken}", "--workers", "2")
    assert done.returncode == 1, done
    assert error_lines(done.stderr) == [
        f"herdgate gateway: cannot listen on 127.0.0.1:{taken}: address already in use"
    ]
    assert "password" not in done.stdout.lower()
    _assert_nothing_left(state)


def test_the_first_start_that_serves_shows_the_password(tmp_path: Path, taken: int) -> None:
    state = tmp_path / "state"
    assert _start(state, "--listen", f"127.0.0.1:{taken}").returncode == 1
    port = free_port()
    log_path = tmp_path / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERDGATE_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "herdgate", "gateway", "--state-dir", str(state),
             "--listen", f"127.0.0.1:{port}"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(lambda: "listening on" in log_path.read_text(), 30, "the gateway never listened")
        assert "Bootstrap admin password: " in log_path.read_text()
        assert (state / "bootstrap-password").exists()
    finally:
        process.terminate()
        process.wait(30)
    assert process.returncode == 0, log_path.read_text()
    assert [p for p in state.rglob("*") if p.is_socket()] == []

"""systemd notifications: parsing the environment, the messages, and a real datagram socket.

A bound AF_UNIX datagram socket in tmp_path (or in the abstract namespace) stands in for
systemd's notify socket.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import notify
from config.notify import Notifier
from tests.fakes.loop_clock import virtual_time


class Listener:
    """What systemd would see: the datagrams sent to one socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self, timeout: float = 2.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        self.sock.setblocking(False)
        found = []
        try:
            while True:
                found.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return found


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield Listener(sock, str(path))


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    name = f"herdgate-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield Listener(sock, "@" + name)


# -- pure parts ---------------------------------------------------------------------------


def test_socket_address() -> None:
    assert notify.socket_address(None) is None
    assert notify.socket_address("") is None
    assert notify.socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify.socket_address("@sd-notify") == b"\0sd-notify"
    assert notify.socket_address("relative/path") is None
    assert notify.socket_address("vsock:2:1234") is None


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30_000_000),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30_000_000),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),  # another process's
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": ""}, None),
    ],
)
def test_watchdog_usec(environ: dict[str, str], expected: int | None) -> None:
    assert notify.watchdog_usec(environ, 4242) == expected


def test_watchdog_interval_is_half_the_timeout() -> None:
    assert notify.watchdog_interval(None) is None
    assert notify.watchdog_interval(30_000_000) == 15.0
    assert notify.watchdog_interval(200_000) == pytest.approx(0.1)


def test_from_env() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}
    n = Notifier.from_env(env, pid=7)
    assert n.enabled and n.address == b"\0x"
    assert n.watchdog_interval() == 15.0
    assert Notifier.from_env(env, pid=8).watchdog_interval() is None
    # No socket: nothing to ping either.
    assert Notifier.from_env({"WATCHDOG_USEC": "30000000"}, pid=7).watchdog_interval() is None
    assert not Notifier.from_env({}).enabled
    assert not Notifier.disabled().enabled


def test_from_env_reads_and_keeps_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier.from_env()
    assert n.address == "/run/systemd/notify"
    assert n.watchdog_interval() == 1.0
    assert os.environ["NOTIFY_SOCKET"] == "/run/systemd/notify"  # children decide themselves
    assert os.environ["WATCHDOG_USEC"] == "2000000"


def test_messages() -> None:
    assert notify.message("READY=1", "STATUS=up") == b"READY=1\nSTATUS=up"
    assert notify.status_field("one\ntwo\r\nthree ") == "STATUS=one two three"
    assert notify.reloading_fields(123) == ("RELOADING=1", "MONOTONIC_USEC=123")


def test_monotonic_usec_is_clock_monotonic() -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    now = notify.monotonic_usec()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= now <= after


# -- a real socket ------------------------------------------------------------------------


def test_sends_each_message(listener: Listener) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": listener.env_value})
    assert n.ready()
    assert listener.receive() == "READY=1"
    assert n.ready("serving")
    assert listener.receive() == "READY=1\nSTATUS=serving"
    assert n.status("connected to 1 of 1 gateway replicas")
    assert listener.receive() == "STATUS=connected to 1 of 1 gateway replicas"
    assert n.watchdog()
    assert listener.receive() == "WATCHDOG=1"
    assert n.stopping()
    assert listener.receive() == "STOPPING=1"
    before = notify.monotonic_usec()
    assert n.reloading()
    fields = listener.receive().split("\n")
    assert fields[0] == "RELOADING=1"
    key, _, value = fields[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= notify.monotonic_usec()


def test_abstract_socket(abstract_listener: Listener) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": abstract_listener.env_value})
    assert n.ready()
    assert abstract_listener.receive() == "READY=1"


def test_without_notify_socket_nothing_is_sent() -> None:
    n = Notifier.from_env({})
    assert not n.ready()
    assert not n.stopping()
    assert not n.reloading()
    assert not n.status("x")
    assert not n.watchdog()


def test_send_failure_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="config.notify")
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.enabled
    assert not n.ready()
    assert not Notifier(b"\0herdgate-nobody-listens-here").stopping()
    assert "cannot notify systemd" in caplog.text


# -- the watchdog -------------------------------------------------------------------------


async def test_run_watchdog_pings_at_half_the_timeout(listener: Listener) -> None:
    n = Notifier.from_env(
        {"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "40000"}, pid=os.getpid()
    )
    assert n.watchdog_interval() == pytest.approx(0.02)
    pings: list[str] = []
    loop = asyncio.get_running_loop()
    with virtual_time():
        started = loop.time()
        task = asyncio.create_task(n.run_watchdog())
        while len(pings) < 5 and loop.time() - started < 5:
            await asyncio.sleep(0.01)
            pings += listener.pending()
        elapsed = loop.time() - started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert pings[:5] == ["WATCHDOG=1"] * 5
    # The first at once, then one per interval: never faster.
    assert elapsed >= 4 * 0.02 - 1e-9  # (virtual times are float sums)


async def test_watchdog_running_stops_with_its_block(listener: Listener) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "20000"})
    with virtual_time():
        async with n.watchdog_running():
            await asyncio.sleep(0.1)
        count = len(listener.pending())
        assert count >= 3
        await asyncio.sleep(0.05)
        assert listener.pending() == []


async def test_a_stuck_loop_stops_the_pings(listener: Listener) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "20000"})
    with virtual_time() as clock:
        async with n.watchdog_running():
            await asyncio.sleep(0.05)
            listener.pending()
            clock.advance(0.1)  # the loop hangs: no ping goes out meanwhile
            assert listener.pending() == []
            await asyncio.sleep(0.05)
            assert listener.pending()


@pytest.mark.parametrize(
    "environ",
    [
        {"WATCHDOG_USEC": "20000"},  # no socket
        {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_PID": "1", "WATCHDOG_USEC": "20000"},
        {"NOTIFY_SOCKET": "/nonexistent"},  # no watchdog
    ],
)
async def test_run_watchdog_returns_without_a_watchdog(environ: dict[str, str]) -> None:
    n = Notifier.from_env(environ, pid=2)
    await asyncio.wait_for(notify.run_watchdog(n), 1.0)

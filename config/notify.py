"""systemd's notification protocol (sd_notify(3)), spoken directly over ``$NOTIFY_SOCKET``.

A service started with ``Type=notify`` tells systemd how it is doing by sending datagrams
of ``KEY=VALUE`` lines to the AF_UNIX socket named in ``$NOTIFY_SOCKET`` (a path, or an
abstract name written with a leading ``@``): ``READY=1`` once it really serves,
``STOPPING=1`` when it begins to shut down, ``RELOADING=1`` (with ``MONOTONIC_USEC=``)
when a reload begins — followed by ``READY=1`` when it is done — ``STATUS=`` free text for
``systemctl status``, and ``WATCHDOG=1`` at least every ``$WATCHDOG_USEC`` microseconds
when the unit sets ``WatchdogSec=``. :func:`run_watchdog` sends the pings from the event
loop itself, so a loop that hangs stops pinging and systemd restarts the service.

Without ``$NOTIFY_SOCKET`` (not under systemd) every call is a no-op. Sending never
raises: a failure is logged at debug level and reported as ``False``. The environment is
read, never changed: a supervisor that starts children decides itself whether they see
``$NOTIFY_SOCKET``.

The parsing and message building are pure functions; :class:`Notifier` is the small I/O
wrapper (one short-lived datagram socket per message, as libsystemd does, so a forked
child never shares it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping

logger = logging.getLogger(__name__)

SEND_TIMEOUT_S = 1.0
"""How long one send may block when systemd's queue is full (it drains it at once)."""

READY = "READY=1"
STOPPING = "STOPPING=1"
WATCHDOG = "WATCHDOG=1"


def socket_address(value: str | None) -> str | bytes | None:
    """The address in ``$NOTIFY_SOCKET``: a path, ``@name`` -> abstract ``b"\\0name"``.

    None when unset, empty or not something this module can talk to (systemd only ever
    hands out absolute paths and abstract names).
    """
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """``$WATCHDOG_USEC`` when it is meant for process ``pid`` (``$WATCHDOG_PID``), else None."""
    raw = environ.get("WATCHDOG_USEC", "")
    if not raw.isdigit() or int(raw) <= 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(raw)


def watchdog_interval(usec: int | None) -> float | None:
    """Seconds between pings: half the watchdog timeout, as sd_watchdog_enabled(3) advises."""
    return None if usec is None else usec / 2 / 1_000_000


def status_field(text: str) -> str:
    """``STATUS=<text>`` on one line (a newline would start another field)."""
    return "STATUS=" + " ".join(text.splitlines()).strip()


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def reloading_fields(now_usec: int) -> tuple[str, str]:
    """``RELOADING=1`` with the CLOCK_MONOTONIC time systemd needs to order the reload."""
    return "RELOADING=1", f"MONOTONIC_USEC={now_usec}"


def message(*fields: str) -> bytes:
    """One datagram: the fields, one per line."""
    return "\n".join(fields).encode()


class Notifier:
    """Notifications to systemd; a no-op when not started by systemd with ``Type=notify``."""

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec if address is not None else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """From ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID`` (left in place)."""
        env = os.environ if environ is None else environ
        return cls(
            socket_address(env.get("NOTIFY_SOCKET")),
            watchdog_usec(env, os.getpid() if pid is None else pid),
        )

    @classmethod
    def disabled(cls) -> Notifier:
        return cls(None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings, or None when no watchdog is asked for."""
        return watchdog_interval(self.watchdog_usec)

    # -- messages -------------------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """Serving now (also after a reload)."""
        return self.notify(READY, *self._status(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutting down from now on."""
        return self.notify(STOPPING, *self._status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload begins; call :meth:`ready` when it is done."""
        return self.notify(*reloading_fields(monotonic_usec()), *self._status(status))

    def status(self, text: str) -> bool:
        """One line for ``systemctl status``."""
        return self.notify(status_field(text))

    def watchdog(self) -> bool:
        """One keep-alive ping."""
        return self.notify(WATCHDOG)

    def notify(self, *fields: str) -> bool:
        """Send the fields as one datagram; whether it went out (never raises)."""
        if self.address is None or not fields:
            return False
        data = message(*fields)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT_S)
                sock.sendto(data, self.address)  # bytes: an abstract name
        except OSError as exc:
            logger.debug("cannot notify systemd (%r): %s", self.address, exc)
            return False
        return True

    @staticmethod
    def _status(status: str | None) -> tuple[str, ...]:
        return () if status is None else (status_field(status),)

    # -- the watchdog ---------------------------------------------------------------------

    async def run_watchdog(self) -> None:
        """Ping at :meth:`watchdog_interval` from this event loop until cancelled."""
        await run_watchdog(self)

    @contextlib.asynccontextmanager
    async def watchdog_running(self) -> AsyncIterator[None]:
        """``async with notifier.watchdog_running():`` pings while the body runs."""
        task = asyncio.create_task(run_watchdog(self), name="systemd-watchdog")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def run_watchdog(notifier: Notifier) -> None:
    """Send ``WATCHDOG=1`` every half watchdog timeout; returns at once when there is none."""
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    logger.debug("systemd watchdog: pinging every %.3fs", interval)
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)

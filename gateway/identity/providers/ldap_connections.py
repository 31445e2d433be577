"""ldap3 plumbing for the LDAP provider: TLS, the service-account pool, error text."""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.identity.providers.ldap3_compat import (
    Connection,
    LDAPException,
    Tls,
)

logger = logging.getLogger(__name__)


class LDAPFailure(Exception):
    """The server answered, but not usefully (a refused service bind, a failed search)."""


class ContextTls(Tls):  # type: ignore[misc]  # ldap3 is untyped
    """ldap3's ``Tls`` wrapping sockets with one ``ssl.SSLContext``.

    The standard library then verifies the chain and the host name (and sends
    SNI). ldap3's own host-name check calls ``ssl.match_hostname``, deprecated
    since Python 3.7 and removed in 3.12.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(validate=context.verify_mode)
        self.context = context

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        connection.socket = self.context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=connection.server.host,
        )


def tls_context(ca_file: str, insecure: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True)
class Entry:
    dn: str
    attributes: dict[str, list[str]]

    def values(self, attribute: str) -> list[str]:
        return self.attributes.get(attribute.lower(), []) if attribute else []

    def first(self, attribute: str) -> str:
        values = self.values(attribute)
        return values[0] if values else ""


def close_connection(conn: Connection) -> None:
    """Unbind quietly, close the socket, and forget ``conn`` in ldap3's ``ServerPool``.

    ldap3 2.9 keeps every connection ever opened through a pool in
    ``ServerPool.pool_states`` (never removed): without this, each login would
    leak one ``Connection``.
    """
    with contextlib.suppress(LDAPException, OSError):
        conn.unbind()
    # ldap3 leaves the socket open when connecting or the TLS handshake failed.
    sock = getattr(conn, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
    pool = getattr(conn, "server_pool", None)
    if pool is not None:
        pool.pool_states.pop(conn, None)


class ConnectionPool:
    """Bound service-account connections, reused newest first; thread-safe."""

    def __init__(self, factory: Callable[[], Connection], size: int, idle_timeout: float) -> None:
        self._factory = factory
        self._size = size
        self._idle_timeout = idle_timeout
        self._idle: deque[tuple[float, Connection]] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self.created = 0

    def acquire(self) -> tuple[Connection, bool]:
        """A connection, and whether it was reused (and so may have gone stale)."""
        now = time.monotonic()
        stale: list[Connection] = []
        found: Connection | None = None
        with self._lock:
            while self._idle and now - self._idle[0][0] > self._idle_timeout:
                stale.append(self._idle.popleft()[1])
            while self._idle:
                conn = self._idle.pop()[1]
                if conn.closed:
                    stale.append(conn)
                    continue
                found = conn
                break
        for conn in stale:
            close_connection(conn)
        if found is not None:
            return found, True
        conn = self._factory()
        with self._lock:
            self.created += 1
        return conn, False

    def release(self, conn: Connection) -> None:
        with self._lock:
            if not self._closed and not conn.closed and len(self._idle) < self._size:
                self._idle.append((time.monotonic(), conn))
                return
        close_connection(conn)

    def idle(self) -> int:
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = [conn for _, conn in self._idle]
            self._idle.clear()
        for conn in conns:
            close_connection(conn)


def failure_reason(exc: BaseException) -> str:
    text = str(exc).lower()
    name = type(exc).__name__
    if "pool" in name.lower() and "exhausted" in name.lower():
        return "no server accepted a connection"
    if "ssl" in text or "certificate" in text or "tls" in name.lower():
        return "TLS handshake failed"
    if "timed out" in text or "timeout" in text:
        return "no answer in time"
    if "refused" in text or "socketopen" in name.lower() or "unreachable" in text:
        return "cannot connect"
    if "terminated" in name.lower() or "closed" in text:
        return "connection closed by the server"
    return name

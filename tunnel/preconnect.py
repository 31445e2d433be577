"""One TLS connection to the API server, dialled before a tunnel stream needs it.

A stream relayed byte for byte (``tunnel.relay``: short requests, exec, attach,
port-forward) needs a TLS connection of its own, and dialling it (TCP and a TLS
handshake; docs/benchmarks.md has what it costs) stood between a user and the first byte
of, say, their ``kubectl exec``. So once the API server has answered on a relayed
connection, ``Spare.refill`` dials the next one in the background and keeps it; the next
stream takes it (``Spare.take``) instead of dialling.

Only on demand: nothing is dialled for a cluster nobody uses, at most one connection is
kept and one being dialled, and a kept one is given up after ``KEEP_S`` (kube-apiserver
closes a connection that has sent no request after its 32-s ``ReadHeaderTimeout``), or
as soon as the server closes it or sends anything (nothing is expected before a request).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable

from tunnel.tls import TLSTransport

logger = logging.getLogger(__name__)

KEEP_S = 20.0
"""How long a spare connection is kept unused (well inside kube-apiserver's 32 s)."""
DIAL_TIMEOUT_S = 10.0
"""A spare's dial that has not finished by then is given up (as a relay's own)."""

Dial = Callable[[Callable[[], asyncio.BaseProtocol]], Awaitable[TLSTransport]]
"""Dials the API server with the given protocol factory (``tls.connect`` bound to it)."""


class _Kept(asyncio.Protocol):
    """The protocol of a connection while it is kept: anything from the server ends it."""

    def __init__(self, spare: Spare) -> None:
        self.spare = spare
        self.transport: TLSTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.spare.drop(self)

    def eof_received(self) -> bool:
        self.spare.drop(self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.spare.drop(self)


class Spare:
    """At most one connection kept for the next stream, and one being dialled."""

    __slots__ = ("_closed", "_dialling", "_kept", "_timer")

    def __init__(self) -> None:
        self._kept: _Kept | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._dialling: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def kept(self) -> bool:
        return self._kept is not None

    @property
    def closed(self) -> bool:
        return self._closed

    def take(self) -> TLSTransport | None:
        """The kept connection (its protocol still ``_Kept``: the caller sets its own
        with ``set_protocol`` and calls ``connection_made``), or None. One that closed
        is no longer kept (``drop``)."""
        kept = self._kept
        if kept is None:
            return None
        self._forget()
        return kept.transport

    def refill(self, dial: Dial) -> None:
        """Dial a connection to keep, unless one is kept or being dialled."""
        if self._closed or self._kept is not None or self._dialling is not None:
            return
        self._dialling = asyncio.get_running_loop().create_task(self._dial(dial))

    async def _dial(self, dial: Dial) -> None:
        try:
            async with asyncio.timeout(DIAL_TIMEOUT_S):
                transport = await dial(lambda: _Kept(self))
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            logger.debug("no spare connection to the API server: %s", exc)
            return
        finally:
            self._dialling = None
        kept = transport.get_protocol()
        assert isinstance(kept, _Kept)
        if self._closed or self._kept is not None or transport.is_closing():
            transport.close()
            return
        self._kept = kept
        self._timer = asyncio.get_running_loop().call_later(KEEP_S, self.drop, kept)

    def drop(self, kept: _Kept) -> None:
        """Give up ``kept`` (if it is still the one kept) and close it."""
        if self._kept is not kept:
            return
        self._forget()
        if kept.transport is not None:
            kept.transport.close()

    def _forget(self) -> None:
        self._kept = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """No more spares: the kept one closed, a dial under way cancelled."""
        self._closed = True
        if self._kept is not None:
            self.drop(self._kept)
        if self._dialling is not None:
            self._dialling.cancel()
            self._dialling = None

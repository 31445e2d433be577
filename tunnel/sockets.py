"""Socket options under asyncio transports."""

from __future__ import annotations

import asyncio
import contextlib
import socket


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY on the socket under ``transport`` (TLS or not): small writes go at once.

    Nagle's algorithm with delayed ACKs stalls request/answer traffic by up to 40 ms.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

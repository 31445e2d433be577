"""Socket options under asyncio transports, and the read buffer their protocols share."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TypeGuard


def is_stream(transport: asyncio.BaseTransport) -> TypeGuard[asyncio.Transport]:
    """Whether ``transport`` carries a byte stream both ways (asyncio's, uvloop's, which
    asyncio does not count as ``asyncio.Transport``, and ``tunnel.tls``'s)."""
    return hasattr(transport, "write") and hasattr(transport, "pause_reading")


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY on the socket under ``transport`` (TLS or not): small writes go at once.

    Nagle's algorithm with delayed ACKs stalls request/answer traffic by up to 40 ms.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


READ_BUFFER_BYTES = 256 * 1024
"""Bytes read at once by the buffered protocols (the agent's API-server connections and
the tunnel's WebSocket): with TLS, uvloop fills it from as many 16 KiB records as have
arrived, so a big answer moves in pieces of up to this size (256 KiB rather than 64 KiB
for the agent's CPU per MB: docs/design.md section 9, "DATA handed on as it arrives",
has the measurement)."""

shared_read_buffer = memoryview(bytearray(READ_BUFFER_BYTES))
"""One read buffer for every buffered protocol of the process: the event loop fills it
and calls that protocol's ``buffer_updated``, which copies out all it keeps before
returning, so no two connections ever use it at once. A buffer per connection was its
size in memory per open stream or idle tunnel."""

"""aiohttp's internals: the WebSocket mask helper.

What herdgate relies on, and what runs when it does not hold (one WARNING):

``websocket-mask``: ``aiohttp._websocket.helpers.websocket_mask(mask, data)``, which XORs
a bytearray in place with a 4-byte key. The tunnel's WebSocket connection
(:mod:`tunnel.wsconn`) masks and unmasks every payload with :data:`websocket_mask`.
Fallback: ``websocket_mask`` is None and the tunnel uses ``tunnel.websocket.mask_pure``
(the same XOR with ``bytes.translate``, much slower; docs/benchmarks.md has the figures).
Chosen when this module is imported (the probe is a computation, no I/O); reported by the
start-up self-test.

Tested: aiohttp 3.14.5. The probe masks buffers of several sizes (0 to 1 KiB, not
multiples of 4 among them) with a random key and compares with a plain XOR.

The gateway's HTTP server needs none of aiohttp's internals: the front owns every client
connection, and aiohttp's low-level ``web.Server`` serves the management API through its
public interface (``gateway.front.bridge``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from config.compat.assumption import AGENT, GATEWAY, Assumption, Broken

# 1. websocket_mask

_MASK_SIZES = (0, 1, 3, 4, 5, 7, 8, 63, 64, 65, 1027)


def _reference_mask(mask: bytes, data: bytes) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def _aiohttp_mask() -> Callable[[bytes, bytearray], None]:
    from aiohttp._websocket.helpers import websocket_mask as helper

    mask: Callable[[bytes, bytearray], None] = helper
    return mask


def _probe_mask() -> None:
    helper = _aiohttp_mask()
    key = os.urandom(4)
    for size in _MASK_SIZES:
        payload = os.urandom(size)
        data = bytearray(payload)
        if helper(key, data) is not None or data != _reference_mask(key, payload):
            raise Broken(f"websocket_mask gave other bytes ({size} bytes)")


MASK = Assumption(
    "websocket-mask",
    "aiohttp._websocket.helpers.websocket_mask",
    "the tunnel's WebSocket masks in Python (slower)",
    _probe_mask,
    programs=(GATEWAY, AGENT),
)


def _choose_mask() -> Callable[[bytes, bytearray], None] | None:
    return _aiohttp_mask() if MASK.evaluate() else None


websocket_mask = _choose_mask()
"""``websocket_mask(mask, data)``: XOR ``data`` (a bytearray) in place with ``mask``;
None when aiohttp's helper is not as tested (the tunnel then masks in Python)."""

"""The client's address behind a balancer: trusted balancers, the PROXY protocol and
``X-Forwarded-For`` (settings ``server.trusted_proxies`` and ``server.proxy_protocol``).

Only a balancer the settings name (by address or CIDR) is believed:

- **PROXY protocol** (a balancer in TCP mode, ``send-proxy-v2``): with
  ``proxy_protocol: true`` a connection from a trusted balancer must begin with a v1 or
  v2 header (``read_proxy_header``, before the TLS handshake: the header precedes the
  client's ClientHello); the header's source address is the connection's peer from then
  on (``peername``: the fronts, agents' ``/v3/connect``, the login limits and the audit
  log all read it). A trusted balancer's connection without a valid header is closed.
  A connection from anyone else is TLS at once: a PROXY header there fails the
  handshake (neither ``P`` nor ``\\r`` is a TLS record type) and the connection is closed,
  with no work added to it.
- **X-Forwarded-For** (a balancer that speaks HTTP and re-encrypts): honoured only on a
  connection whose peer is trusted; the client is the rightmost address that is not a
  trusted balancer (``TrustedProxies.client_of``), so addresses a client wrote itself
  are never believed.

With no ``trusted_proxies`` (the default) none of this runs: the listener gets no hook,
the fronts check no header.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.front import proxy_protocol
from gateway.front.proxy_protocol import ProxyHeader

logger = logging.getLogger(__name__)

MAX_FORWARDED = 64
"""``X-Forwarded-For`` entries looked at (from the right)."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The balancers whose word on the client's address is believed."""

    __slots__ = ("_cache", "networks")

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(c.strip(), strict=False) for c in cidrs
        )
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str) -> bool:
        known = self._cache.get(address)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            trusted = False
        else:
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            trusted = any(ip in net for net in self.networks)
        if len(self._cache) < 4096:
            self._cache[address] = trusted
        return trusted

    def client_of(self, peer: str, forwarded_for: Sequence[bytes]) -> str:
        """The client's address for a request from ``peer`` with these ``X-Forwarded-For``
        values (in order): ``peer`` unless it is trusted, else the rightmost forwarded
        address that is not a trusted balancer (all trusted: the leftmost; one that is
        not an address: the last trusted one before it)."""
        if not self.trusts(peer):
            return peer
        client = peer
        entries = [e for value in forwarded_for for e in value.split(b",")]
        for raw in reversed(entries[-MAX_FORWARDED:]):
            address = _address(raw)
            if address is None:
                return client
            client = address
            if not self.trusts(address):
                return address
        return client


def _address(raw: bytes) -> str | None:
    text = raw.strip().decode("latin-1")
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


async def read_proxy_header(sock: socket.socket, timeout_s: float) -> ProxyHeader | None:
    """The PROXY header at the start of the non-blocking ``sock``, read without taking a
    byte past it (peek, then consume what is certainly the header's); None when there is
    none, it is malformed, the peer closed, or it took longer than ``timeout_s``. Each
    round consumes at least a byte, so it ends within ``MAX_HEADER`` rounds."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout_s
    taken = b""
    for _ in range(proxy_protocol.MAX_HEADER + 1):
        try:
            peeked = sock.recv(proxy_protocol.MAX_HEADER - len(taken), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            left = deadline - time.monotonic()
            if left <= 0 or not await _readable(loop, sock, left):
                return None
            continue
        except OSError:
            return None
        if not peeked:
            return None
        result = proxy_protocol.parse(taken + peeked)
        if isinstance(result, ProxyHeader):
            rest = result.consumed - len(taken)
            if rest > 0 and len(sock.recv(rest)) != rest:
                return None  # peeked bytes are there: a short read cannot happen
            return result
        if isinstance(result, proxy_protocol.Invalid):
            logger.info("connection refused: %s", result.reason)
            return None
        taken += sock.recv(len(peeked))  # all of it is the header's
    return None


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket, within: float) -> bool:
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await asyncio.wait_for(ready, within)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


class ProxyPreface:
    """``tunnel.tls.TLSServer``'s ``preface`` with ``proxy_protocol: true``: a trusted
    balancer's connection must start with a PROXY header (its source becomes the peer);
    anyone else's is left alone (TLS refuses a header there)."""

    def __init__(self, trusted: TrustedProxies, timeout_s: float) -> None:
        self.trusted = trusted
        self.timeout_s = timeout_s

    async def __call__(self, sock: socket.socket, peer: Any) -> Any:
        host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self.trusted.trusts(host):
            return peer
        header = await read_proxy_header(sock, self.timeout_s)
        if header is None:
            return None
        if header.source is None:
            return peer  # LOCAL (a health check) or no IP address: the balancer's own
        return (header.source, header.source_port)

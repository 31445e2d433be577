"""The PROXY protocol header (haproxy's specification, versions 1 and 2), sans I/O.

A balancer in TCP mode that speaks it (haproxy ``send-proxy``/``send-proxy-v2``, AWS
NLB, F5, ...) sends one header before anything else on the connection, naming the
client's address. ``parse`` takes the bytes received so far and answers:

- ``NEED_MORE``: a header has begun and is not complete (every byte given so far is the
  header's: the caller may consume them and read on);
- a ``ProxyHeader``: how many bytes it took (``consumed``; what follows is the client's
  own stream, TLS here) and the addresses; ``source`` None means "use the connection's
  own address" (v2 ``LOCAL``, a balancer's health check; v1 ``UNKNOWN``; v2 ``UNSPEC``
  or ``AF_UNIX``);
- ``Invalid``: not a header, or a malformed one. The connection is to be closed.

Bounded: a v1 header is at most 107 bytes (the specification's limit), a v2 header at
most ``MAX_V2_LENGTH`` (16 bytes and its address block with TLVs, which are skipped).
No byte beyond the header is ever looked at, and nothing here raises on any input.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

V1_PREFIX: Final = b"PROXY "
V1_MAX: Final = 107
"""The longest v1 line, CRLF included (section 2.1)."""
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED: Final = 16
MAX_V2_LENGTH: Final = 16 + 2048
"""The longest v2 header accepted: the fixed part, the addresses (at most 216 bytes, for
AF_UNIX) and TLVs (a balancer's TLS details and the like)."""
MAX_HEADER: Final = max(V1_MAX, MAX_V2_LENGTH)


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    consumed: int
    """Bytes the header took."""
    version: int
    source: str | None = None
    """The client's address, canonical (``ipaddress``); None: the connection's own."""
    source_port: int = 0
    destination: str | None = None
    destination_port: int = 0


@dataclass(frozen=True, slots=True)
class Invalid:
    reason: str


class _NeedMore:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = _NeedMore()

Result = ProxyHeader | Invalid | _NeedMore


def starts_like_a_header(data: bytes) -> bool:
    """Whether ``data`` (at least one byte) could begin a v1 or v2 header."""
    if not data:
        return False
    n = min(len(data), len(V1_PREFIX))
    if data[:n] == V1_PREFIX[:n]:
        return True
    n = min(len(data), len(V2_SIGNATURE))
    return data[:n] == V2_SIGNATURE[:n]


def parse(data: bytes) -> Result:
    """The header at the start of ``data`` (see the module's docstring)."""
    if not data:
        return NEED_MORE
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    return Invalid("not a PROXY protocol header")


def _parse_v1(data: bytes) -> Result:
    n = min(len(data), len(V1_PREFIX))
    if data[:n] != V1_PREFIX[:n]:
        return Invalid("not a PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            return Invalid("PROXY v1 header longer than 107 bytes")
        if b"\n" in data or (b"\r" in data[:-1]):
            return Invalid("PROXY v1 header with a bare CR or LF")
        return NEED_MORE
    line = data[len(V1_PREFIX) : end]
    consumed = end + 2
    if b"\r" in line or b"\n" in line:
        return Invalid("PROXY v1 header with a bare CR or LF")
    parts = line.split(b" ")
    family = parts[0]
    if family == b"UNKNOWN":
        return ProxyHeader(consumed, 1)  # the rest is ignored (section 2.1)
    if family not in (b"TCP4", b"TCP6"):
        return Invalid("PROXY v1 header with an unknown protocol")
    if len(parts) != 5:
        return Invalid("PROXY v1 header without exactly four fields after the protocol")
    version = 4 if family == b"TCP4" else 6
    source = _v1_address(parts[1], version)
    destination = _v1_address(parts[2], version)
    source_port = _v1_port(parts[3])
    destination_port = _v1_port(parts[4])
    if source is None or destination is None:
        return Invalid(f"PROXY v1 header with an address that is not IPv{version}")
    if source_port is None or destination_port is None:
        return Invalid("PROXY v1 header with a port that is not 0..65535")
    return ProxyHeader(consumed, 1, source, source_port, destination, destination_port)


def _v1_address(raw: bytes, version: int) -> str | None:
    try:
        text = raw.decode("ascii")
        address = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except (UnicodeDecodeError, ValueError):
        return None
    return str(address)


def _v1_port(raw: bytes) -> int | None:
    if not raw or len(raw) > 5 or not raw.isdigit() or (raw[:1] == b"0" and len(raw) > 1):
        return None
    port = int(raw)
    return port if port <= 65535 else None


_TCP4 = 0x11
_TCP6 = 0x21


def _parse_v2(data: bytes) -> Result:
    n = min(len(data), len(V2_SIGNATURE))
    if data[:n] != V2_SIGNATURE[:n]:
        return Invalid("not a PROXY protocol header")
    if len(data) < V2_FIXED:
        return NEED_MORE
    version_command = data[12]
    if version_command >> 4 != 2:
        return Invalid("PROXY v2 header of another version")
    command = version_command & 0x0F
    if command > 1:
        return Invalid("PROXY v2 header with an unknown command")
    family = data[13]
    length = int.from_bytes(data[14:16], "big")
    total = V2_FIXED + length
    if total > MAX_V2_LENGTH:
        return Invalid(f"PROXY v2 header longer than {MAX_V2_LENGTH} bytes")
    if len(data) < total:
        return NEED_MORE
    if command == 0:  # LOCAL: the balancer's own connection (health checks)
        return ProxyHeader(total, 2)
    block = data[V2_FIXED:total]
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    if family == _TCP4:
        if length < 12:
            return Invalid("PROXY v2 TCP4 header with a short address block")
        src, dst = ipaddress.IPv4Address(block[0:4]), ipaddress.IPv4Address(block[4:8])
        ports = block[8:12]
    elif family == _TCP6:
        if length < 36:
            return Invalid("PROXY v2 TCP6 header with a short address block")
        src, dst = ipaddress.IPv6Address(block[0:16]), ipaddress.IPv6Address(block[16:32])
        ports = block[32:36]
    elif family in (0x00, 0x31):  # UNSPEC, or a UNIX stream: no IP address to use
        return ProxyHeader(total, 2)
    else:
        return Invalid("PROXY v2 header for a datagram or unknown family")
    return ProxyHeader(
        total,
        2,
        str(src),
        int.from_bytes(ports[0:2], "big"),
        str(dst),
        int.from_bytes(ports[2:4], "big"),
    )


def v1_header(source: str, destination: str, source_port: int, destination_port: int) -> bytes:
    """A v1 header (what a balancer sends; for tests and tools)."""
    family = "TCP4" if ipaddress.ip_address(source).version == 4 else "TCP6"
    line = f"PROXY {family} {source} {destination} {source_port} {destination_port}\r\n"
    return line.encode("ascii")


def v2_header(
    source: str | None,
    destination: str | None = None,
    source_port: int = 0,
    destination_port: int = 0,
    tlvs: bytes = b"",
) -> bytes:
    """A v2 header: PROXY for ``source`` (LOCAL when None)."""
    if source is None:
        return V2_SIGNATURE + bytes((0x20, 0x00)) + len(tlvs).to_bytes(2, "big") + tlvs
    src = ipaddress.ip_address(source)
    dst = ipaddress.ip_address(destination or ("0.0.0.0" if src.version == 4 else "::"))
    family = _TCP4 if src.version == 4 else _TCP6
    block = (
        src.packed
        + dst.packed
        + source_port.to_bytes(2, "big")
        + destination_port.to_bytes(2, "big")
        + tlvs
    )
    return V2_SIGNATURE + bytes((0x21, family)) + len(block).to_bytes(2, "big") + block

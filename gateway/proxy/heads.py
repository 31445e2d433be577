"""Every HTTP/1.1 request head the gateway writes is built here (pure).

The proxy's head to the API server (through the agent, with the agent's credentials),
the head of an upgrade, and the head the HTTP/2 front hands to aiohttp for the
management API: each goes through ``request_head``, which refuses rather than writes
anything that could be read as more than one line, field or request —

- a method that is not an RFC 9110 token;
- a target with anything but visible ASCII, or with ``#``;
- a field name that is not a token (``x: y`` as a name would forge a field);
- a field value with a control character other than HTAB (CR, LF, NUL ...).

The fronts check what they accept too; this is the second line, and it must hold even if
a front forgets a check: a client's bytes never reach an upstream head unchecked.

Cost: names are looked up in a set of names already seen valid; values are checked by
one pass over the client's lines that keeps only their control characters, which must be
the lines' own CR LFs; fields the gateway reuses are checked once (``CheckedFields``).
``tests/unit/gateway/proxy/test_heads.py`` prints the cost of a kubectl request's head.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

Header = tuple[bytes, bytes]

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[!\"$-~]+")
"""Visible ASCII but ``#`` (a request target has no fragment)."""
_NOT_CTL = bytes(b for b in range(256) if not (b < 0x20 or b == 0x7F) or b == 0x09)
"""Every byte but the control characters (HTAB counts as not one): deleting these from
a head leaves exactly its control characters."""

_VALID_NAMES: set[bytes] = set()
_MAX_VALID_NAMES = 1024
"""Names remembered as valid (clients send a small, fixed set of field names)."""
CACHED_NAME_BYTES = 64
"""Longer names are checked each time, not remembered: 1,024 names of 60 KiB would hold
60 MB."""


class UnsafeHead(ValueError):
    """A method, target or field that cannot be written into an HTTP/1.1 head.

    The message names what was refused, never the value (it may hold a credential).
    """


def is_token(data: bytes) -> bool:
    return _TOKEN.fullmatch(data) is not None


def _check_name(name: bytes) -> None:
    if name in _VALID_NAMES:
        return
    if _TOKEN.fullmatch(name) is None:
        raise UnsafeHead("a header field name that is not a token")
    if len(_VALID_NAMES) < _MAX_VALID_NAMES and len(name) <= CACHED_NAME_BYTES:
        _VALID_NAMES.add(name)


class CheckedFields:
    """Header lines already checked by ``field_block``: fields the gateway reuses (the
    agent's ``Host`` and ``Authorization``, a caller's identity headers) are checked once,
    when their block is built, not on every request."""

    __slots__ = ("block",)

    def __init__(self, block: bytes) -> None:
        self.block = block


def _lines(fields: Iterable[Header]) -> bytes:
    parts: list[bytes] = []
    count = 0
    for name, value in fields:
        _check_name(name)
        parts += [name, b": ", value, b"\r\n"]
        count += 1
    block = b"".join(parts)
    # The only control characters are the CR LFs written above: any other (a CR, LF or
    # NUL inside a value) makes what is left longer. One pass over the bytes, in C.
    if len(block.translate(None, _NOT_CTL)) != 2 * count:
        raise UnsafeHead("a header field value with a line break or control character")
    return block


def field_block(fields: Iterable[Header]) -> CheckedFields:
    """``fields`` as checked header lines, to be given to ``request_head`` many times."""
    return CheckedFields(_lines(fields))


def request_head(
    method: bytes, target: bytes, fields: Iterable[Header], *checked: CheckedFields
) -> bytes:
    """``METHOD target HTTP/1.1``, the ``checked`` blocks, ``fields``, and the blank
    line, as one buffer."""
    if _TOKEN.fullmatch(method) is None:
        raise UnsafeHead("a method that is not a token")
    if _TARGET.fullmatch(target) is None:
        raise UnsafeHead("a request target with characters other than visible ASCII, or '#'")
    block = _lines(fields)
    if not checked:
        return b"".join((method, b" ", target, b" HTTP/1.1\r\n", block, b"\r\n"))
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    parts += [c.block for c in checked]
    parts += [block, b"\r\n"]
    return b"".join(parts)

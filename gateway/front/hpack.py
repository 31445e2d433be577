"""HPACK (RFC 7541) for the gateway's HTTP/2 server side: a decoder and a plain encoder.

The ``hpack`` package decodes correctly but slowly for a per-request path, even for a
kubectl request whose fields are all in the dynamic table (``python -m
bench.h2_requests``; docs/benchmarks.md, "HTTP/2 towards clients", has the figure).
``Decoder`` here resolves indexed fields with a list lookup and
leaves only Huffman strings to a table-driven decoder (:mod:`gateway.front.hpack_tables`,
written from RFC 7541 and held to ``hpack`` by the tests).

The decoder also says whether every field line of a block is well-formed as RFC 9113
section 8.2.1 (with RFC 9110 section 5) requires: a name is a lower-case token (a
pseudo-header's, ``:`` and one), a value has no control character but HTAB and no SP or
HTAB at either end. A dynamic-table entry is checked once, when it is inserted, so a
request whose fields are all indexed (kubectl's, after its first) costs no checking;
literal fields are checked with ``bytes.translate`` over precomputed tables.

``encode`` never indexes (RFC 7541 allows an encoder never to insert into its dynamic
table): answers are literals without indexing, ``:status`` of common codes fully
indexed. The peer's decoder then keeps no state for us, and the encoder needs none.
"""

from __future__ import annotations

from gateway.front.hpack_tables import STATIC_TABLE, decode_huffman
from gateway.front.hpack_tables import HuffmanError as HPACKDecodingError

Header = tuple[bytes, bytes]

STATIC: tuple[Header, ...] = STATIC_TABLE
"""The 61 entries of RFC 7541 Appendix A (index 1 is ``STATIC[0]``)."""
_STATIC_LEN = len(STATIC)
ENTRY_OVERHEAD = 32
DEFAULT_TABLE_SIZE = 4096


class HPACKError(Exception):
    """The header block cannot be decoded: a COMPRESSION_ERROR for the connection."""


_LOWER_TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_NAME_MARKS = bytes(0 if c in _LOWER_TCHAR else 1 for c in range(256))
"""``name.translate`` to this has a 1 where the name has a byte that is not a lower-case
tchar (RFC 9110 section 5.6.2; RFC 9113 section 8.2.1 forbids upper case)."""
_VALUE_MARKS = bytes(
    2 if c in (0x09, 0x20) else 1 if c < 0x20 or c == 0x7F else 0 for c in range(256)
)
"""``value.translate`` to this: 1 for a control character other than HTAB (NUL, CR and LF
among them: RFC 9113 section 8.2.1; the others: RFC 9110 section 5.5), 2 for SP and HTAB
(not allowed at either end), 0 for the rest (VCHAR and obs-text)."""


def valid_name(name: bytes) -> bool:
    """A field name RFC 9113 section 8.2.1 allows: a lower-case token, or ``:`` and one
    (whether a pseudo-header is one a request may carry is the caller's to decide)."""
    if name[:1] == b":":
        name = name[1:]
    return len(name) > 0 and name.translate(_NAME_MARKS).find(1) < 0


def valid_value(value: bytes) -> bool:
    """A field value RFC 9113 section 8.2.1 allows (no CR, LF or NUL, no SP or HTAB at
    either end), without the other control characters RFC 9110 section 5.5 excludes."""
    if not value:
        return True
    marks = value.translate(_VALUE_MARKS)
    return marks.find(1) < 0 and marks[0] != 2 and marks[-1] != 2


def _integer(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """The integer whose prefix is in ``data[pos]``; returns it and the next position."""
    mask = (1 << prefix_bits) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data):
            raise HPACKError("truncated integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:  # no field, index or size of ours comes near 2**28
            raise HPACKError("integer too large")


HUFFMAN_CACHE = 32
"""Huffman strings a connection's decoder remembers decoded: clients that never index a
field (the ``h2`` package and others do that for ``authorization``) send the same
encoded token with every request, and decoding it anew each time is wasted work
(docs/design.md section 9 has what it cost)."""
_HUFFMAN_CACHEABLE = 512


def _string(data: bytes, pos: int, cache: dict[bytes, bytes]) -> tuple[bytes, int]:
    if pos >= len(data):
        raise HPACKError("truncated string")
    huffman = data[pos] & 0x80
    length, pos = _integer(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise HPACKError("truncated string")
    raw = data[pos:end]
    if huffman:
        decoded = cache.get(raw)
        if decoded is None:
            try:
                decoded = decode_huffman(raw)
            except HPACKDecodingError as exc:
                raise HPACKError(f"invalid Huffman string: {exc}") from None
            if length <= _HUFFMAN_CACHEABLE:
                if len(cache) >= HUFFMAN_CACHE:
                    cache.clear()
                cache[raw] = decoded
        raw = decoded
    return raw, end


class Decoder:
    """One connection's decoding state: the dynamic table (newest entry first)."""

    __slots__ = ("_entries", "_huffman", "_max", "_size", "_valid", "max_allowed")

    def __init__(self, max_allowed: int = DEFAULT_TABLE_SIZE) -> None:
        self._huffman: dict[bytes, bytes] = {}
        self._entries: list[Header] = []
        self._valid: list[bool] = []
        """Whether each entry of ``_entries`` is a well-formed field line."""
        self._size = 0
        self._max = max_allowed
        self.max_allowed = max_allowed
        """What our SETTINGS_HEADER_TABLE_SIZE allows the peer's encoder."""

    def _lookup(self, index: int) -> Header:
        if 0 < index <= _STATIC_LEN:
            return STATIC[index - 1]
        dynamic = index - _STATIC_LEN - 1
        if 0 <= dynamic < len(self._entries):
            return self._entries[dynamic]
        raise HPACKError(f"header index {index} is not in the table")

    def _add(self, entry: Header, valid: bool) -> None:
        size = len(entry[0]) + len(entry[1]) + ENTRY_OVERHEAD
        if size > self._max:
            self._entries.clear()
            self._valid.clear()
            self._size = 0
            return
        self._entries.insert(0, entry)
        self._valid.insert(0, valid)
        self._size += size
        self._evict()

    def _evict(self) -> None:
        entries = self._entries
        while self._size > self._max:
            name, value = entries.pop()
            self._valid.pop()
            self._size -= len(name) + len(value) + ENTRY_OVERHEAD

    def _literal(self, data: bytes, pos: int, prefix_bits: int) -> tuple[Header, int, bool]:
        """A literal field: its name by index (or as a string), then its value; and
        whether the field is well-formed."""
        index, pos = _integer(data, pos, prefix_bits)
        if index == 0:
            name, pos = _string(data, pos, self._huffman)
            valid = valid_name(name)
        elif index <= _STATIC_LEN:
            name = STATIC[index - 1][0]
            valid = True
        else:
            name = self._lookup(index)[0]
            valid = self._valid[index - _STATIC_LEN - 1] or valid_name(name)
        value, pos = _string(data, pos, self._huffman)
        return (name, value), pos, valid and valid_value(value)

    def decode(self, data: bytes, limit: int) -> tuple[list[Header], bool, bool]:
        """The fields of one header block; whether their size (RFC 9113's: name, value
        and 32 per field) stayed within ``limit``; whether every field line is
        well-formed (``valid_name``, ``valid_value``). Past the limit the block is still
        decoded, to keep the table in step, but no more fields are kept."""
        headers: list[Header] = []
        total = 0
        pos = 0
        end = len(data)
        entries = self._entries
        all_valid = True
        fields_seen = False
        while pos < end:
            byte = data[pos]
            if byte & 0x80:  # indexed field
                index, pos = _integer(data, pos, 7)
                if 0 < index <= _STATIC_LEN:
                    field = STATIC[index - 1]  # the static table's fields are all valid
                else:
                    dynamic = index - _STATIC_LEN - 1
                    if not 0 <= dynamic < len(entries):
                        raise HPACKError(f"header index {index} is not in the table")
                    field = entries[dynamic]
                    if not self._valid[dynamic]:
                        all_valid = False
            elif byte & 0x40:  # literal, added to the table
                field, pos, valid = self._literal(data, pos, 6)
                self._add(field, valid)
                all_valid = all_valid and valid
            elif byte & 0x20:  # dynamic table size update
                if fields_seen:
                    raise HPACKError("table size update after a header field")
                size, pos = _integer(data, pos, 5)
                if size > self.max_allowed:
                    raise HPACKError(f"table size {size} above the allowed {self.max_allowed}")
                self._max = size
                self._evict()
                continue
            else:  # literal, not added (0000) or never added (0001)
                field, pos, valid = self._literal(data, pos, 4)
                all_valid = all_valid and valid
            fields_seen = True
            total += len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
            if total <= limit:
                headers.append(field)
        return headers, total <= limit, all_valid


def _encode_integer(value: int, prefix_bits: int, first: int) -> bytes:
    mask = (1 << prefix_bits) - 1
    if value < mask:
        return bytes((first | value,))
    out = bytearray((first | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_string(value: bytes) -> bytes:
    if len(value) < 0x7F:
        return bytes((len(value),)) + value
    return _encode_integer(len(value), 7, 0) + value


_STATUS_INDEXED = {
    int(value): bytes((0x80 | (i + 1),))
    for i, (name, value) in enumerate(STATIC)
    if name == b":status"
}
_NAME_INDEX: dict[bytes, int] = {}
for _i, (_name, _value) in enumerate(STATIC):
    _NAME_INDEX.setdefault(_name, _i + 1)
_NAME_PREFIX: dict[bytes, bytes] = {}
TABLE_SIZE_ZERO = b"\x20"
"""A dynamic table size update to 0: begins our first header block after the peer
announced a table size (our encoder never uses the table)."""


def _name_prefix(name: bytes) -> bytes:
    prefix = _NAME_PREFIX.get(name)
    if prefix is None:
        index = _NAME_INDEX.get(name)
        if index is not None:  # literal without indexing, indexed name
            prefix = _encode_integer(index, 4, 0x00)
        else:
            prefix = b"\x00" + _encode_string(name)
        if len(_NAME_PREFIX) < 512:  # answers carry a small, fixed set of names
            _NAME_PREFIX[name] = prefix
    return prefix


def encode_status(status: int) -> bytes:
    indexed = _STATUS_INDEXED.get(status)
    if indexed is not None:
        return indexed
    return _encode_integer(_NAME_INDEX[b":status"], 4, 0x00) + _encode_string(b"%d" % status)


def encode(status: int, headers: list[Header]) -> bytes:
    """A response header block: ``:status``, then ``headers`` (names already lower case)."""
    parts = [encode_status(status)]
    for name, value in headers:
        parts.append(_name_prefix(name))
        parts.append(_encode_string(value))
    return b"".join(parts)

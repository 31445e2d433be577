"""HPACK's fixed tables, written from RFC 7541: the static table and the Huffman code.

:mod:`gateway.front.hpack` decodes header blocks with them. They used to come from the
``hpack`` package's internal modules (``hpack.table``, ``hpack.huffman_table``); now
``hpack`` is only the reference the tests hold these to (its public ``Encoder`` and
``Decoder``, tests/unit/gateway/front/test_hpack_tables.py).

The Huffman code of Appendix B is canonical (codes of one length are consecutive, in
symbol order, and each length's first code follows the previous length's last), so the
table below gives each symbol's code length (the RFC's "len" column) and the codes are
derived from them. The decoder walks a state machine over 4-bit nibbles (as nghttp2's
and the ``hpack`` package's do): a state is an inner node of the code tree, each nibble
leads to another and completes at most one symbol (the shortest code has 5 bits).
"""

from __future__ import annotations

Header = tuple[bytes, bytes]

STATIC_TABLE: tuple[Header, ...] = (
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)
"""RFC 7541 Appendix A: index 1 is ``STATIC_TABLE[0]``, index 61 the last."""

HUFFMAN_LENGTHS: tuple[int, ...] = (
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,  # 0-15
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,  # 16-31
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,  # 32-47: ' ' to '/'
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,  # 48-63: '0' to '?'
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,  # 64-79: '@' to 'O'
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,  # 80-95: 'P' to '_'
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,  # 96-111: '`' to 'o'
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,  # 112-127: 'p' to DEL
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,  # 128-143
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,  # 144-159
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,  # 160-175
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,  # 176-191
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,  # 192-207
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,  # 208-223
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,  # 224-239
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,  # 240-255
    30,  # 256: EOS
)  # fmt: skip
"""RFC 7541 Appendix B: the length in bits of each symbol's code (256 is EOS)."""

EOS = 256
MAX_PADDING_BITS = 7
"""RFC 7541 section 5.2: padding longer than 7 bits is a decoding error."""


class HuffmanError(ValueError):
    """The string is not valid Huffman code (RFC 7541 section 5.2)."""


def huffman_codes(lengths: tuple[int, ...] = HUFFMAN_LENGTHS) -> list[int]:
    """The canonical code of each symbol, from the code lengths."""
    order = sorted(range(len(lengths)), key=lambda sym: (lengths[sym], sym))
    codes = [0] * len(lengths)
    code = 0
    previous = lengths[order[0]]
    for i, sym in enumerate(order):
        if i:
            code = (code + 1) << (lengths[sym] - previous)
        previous = lengths[sym]
        codes[sym] = code
    return codes


_FAIL = (-1, -1)


def _build() -> tuple[tuple[tuple[int, int], ...], frozenset[int]]:
    """The nibble state machine: entry ``state * 16 + nibble`` is (the next state times
    16, the symbol completed or -1), or ``_FAIL`` where EOS is completed. Also the
    states a string may end in: the root, or up to 7 bits of EOS's code (all ones)."""
    codes = huffman_codes()
    children: list[list[int]] = [[0, 0]]  # inner nodes; a leaf is -(symbol + 1)
    for sym, (code, length) in enumerate(zip(codes, HUFFMAN_LENGTHS, strict=True)):
        node = 0
        for shift in range(length - 1, 0, -1):
            bit = (code >> shift) & 1
            if not children[node][bit]:
                children.append([0, 0])
                children[node][bit] = len(children) - 1
            node = children[node][bit]
        children[node][code & 1] = -(sym + 1)
    table: list[tuple[int, int]] = []
    for state in range(len(children)):
        for nibble in range(16):
            node, emitted, failed = state, -1, False
            for shift in (3, 2, 1, 0):
                child = children[node][(nibble >> shift) & 1]
                if child < 0:
                    sym = -child - 1
                    failed = failed or sym == EOS
                    emitted, node = sym, 0
                else:
                    node = child
            table.append(_FAIL if failed else (node * 16, emitted))
    accepting = {0}
    node = 0
    for _ in range(MAX_PADDING_BITS):
        node = children[node][1]
        accepting.add(node * 16)
    return tuple(table), frozenset(accepting)


_TABLE, _ACCEPTING = _build()


def decode_huffman(data: bytes | bytearray | memoryview) -> bytes:
    """The octets that ``data`` (Huffman code, RFC 7541 section 5.2) encodes."""
    table = _TABLE
    out = bytearray()
    base = 0  # the state, times 16
    for byte in data:
        base, sym = table[base + (byte >> 4)]
        if sym >= 0:
            out.append(sym)
        elif base < 0:
            raise HuffmanError("EOS inside a Huffman string")
        base, sym = table[base + (byte & 15)]
        if sym >= 0:
            out.append(sym)
        elif base < 0:
            raise HuffmanError("EOS inside a Huffman string")
    if base not in _ACCEPTING:
        raise HuffmanError("a Huffman string ends in an incomplete code or a bad padding")
    return bytes(out)

"""The chunked transfer coding of an API server's answer (RFC 9112 section 7.1), decoded
without I/O: bytes in, body pieces out.

A watch's answer lives for minutes; llhttp's parser object (with the callbacks httptools
binds to it) is most of what the gateway would keep per watch once its head is written.
``gateway.clusters.upstream.Response.park`` hands the rest of a chunked body to this
decoder instead, after checking that it reads the bytes already parsed exactly as llhttp
did. It accepts a subset of what llhttp accepts, never more
(``tests/unit/gateway/clusters/test_chunked.py`` holds it to httptools with hypothesis):

- a chunk size is 1 to 16 hexadecimal digits, directly followed by extensions (ignored)
  or by CRLF; no whitespace, no sign, no bare LF;
- an extension is ``;name`` or ``;name=value``, both tokens (no quoted strings, no
  whitespace: API servers send none), and a size line is at most ``MAX_LINE`` bytes;
- chunk data is followed by CRLF;
- after the last chunk (size 0), trailer fields (``name: value`` lines, ignored) and the
  empty line; the trailer section is at most ``MAX_TRAILERS`` bytes.

Anything else is ``ChunkedError``: the answer is then cut, as a parse error of llhttp's
would cut it. A line is checked as its bytes arrive, not only once it is whole, so a
malformed one is refused as early as llhttp refuses it.
"""

from __future__ import annotations

from typing import Final

MAX_LINE: Final = 4096
"""Longest chunk-size line (digits and extension), CRLF included."""
MAX_TRAILERS: Final = 16 * 1024
"""Longest trailer section after the last chunk."""
MAX_DIGITS: Final = 16

_SIZE: Final = 0
_DATA: Final = 1
_DATA_CR: Final = 2
_DATA_LF: Final = 3
_TRAILER: Final = 4
_DONE: Final = 5

_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_TCHAR: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_VALUE: Final = frozenset(range(0x20, 0x7F)) | frozenset(range(0x80, 0x100)) | {0x09}
"""What a trailer field's value may hold: visible characters, space, HTAB, obs-text."""


class ChunkedError(ValueError):
    """The bytes are not a chunked body this decoder accepts."""


class ChunkedDecoder:
    """One chunked body; ``feed`` as bytes arrive, ``complete`` after the last chunk and
    the trailer section; ``extra`` counts bytes that came after that (a connection that
    is then not reused)."""

    __slots__ = ("_left", "_line", "_state", "_trailers", "extra")

    def __init__(self) -> None:
        self._state = _SIZE
        self._left = 0
        self._line = bytearray()
        self._trailers = 0
        self.extra = 0

    @property
    def complete(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes | bytearray) -> list[bytes | bytearray]:
        """The body pieces in ``data`` (in order); ``ChunkedError`` if it is malformed."""
        out: list[bytes | bytearray] = []
        i = 0
        n = len(data)
        while i < n:
            state = self._state
            if state == _DATA:
                take = min(self._left, n - i)
                out.append(data[i : i + take] if take < n else data)
                self._left -= take
                i += take
                if self._left == 0:
                    self._state = _DATA_CR
            elif state == _DATA_CR:
                if data[i] != 0x0D:
                    raise ChunkedError("chunk data not followed by CRLF")
                self._state = _DATA_LF
                i += 1
            elif state == _DATA_LF:
                if data[i] != 0x0A:
                    raise ChunkedError("chunk data not followed by CRLF")
                self._state = _SIZE
                i += 1
            elif state == _DONE:
                self.extra += n - i
                break
            else:
                end = data.find(b"\n", i)
                stop = n if end < 0 else end + 1
                self._line += data[i:stop]
                limit = MAX_LINE if state == _SIZE else MAX_TRAILERS - self._trailers
                if len(self._line) > limit:
                    raise ChunkedError("chunk size line or trailer section too long")
                i = stop
                if end < 0:
                    _check(self._line, state == _SIZE, final=False)
                else:
                    line, self._line = bytes(self._line), bytearray()
                    _check(line, state == _SIZE, final=True)
                    if state == _SIZE:
                        self._size_line(line)
                    else:
                        self._trailers += len(line)
                        if line == b"\r\n":
                            self._state = _DONE
        return out

    def _size_line(self, line: bytes) -> None:
        digits = 0
        while line[digits] in _HEX:
            digits += 1
        size = int(line[:digits], 16)
        if size >= 1 << 63:
            raise ChunkedError("chunk size too large")
        if size == 0:
            self._state = _TRAILER
        else:
            self._left = size
            self._state = _DATA


def _check(line: bytes | bytearray, size_line: bool, final: bool) -> None:
    """``ChunkedError`` unless ``line`` is (``final``: ends with its LF) or may still become
    (not ``final``: its first bytes) a valid size line or trailer line."""
    end = len(line)
    if final:
        if end < 2 or line[end - 2] != 0x0D:
            raise ChunkedError("line not ended by CRLF")
        end -= 2
    elif end and line[end - 1] == 0x0D:
        end -= 1  # its LF has yet to come: what is before it is the whole line
        final = True
    if 0x0D in line[:end]:
        raise ChunkedError("CR inside a line")
    if size_line:
        _check_size(line[:end], final)
    elif end:
        _check_trailer(line[:end], final)


def _check_size(body: bytes | bytearray, final: bool) -> None:
    digits = 0
    while digits < len(body) and body[digits] in _HEX:
        digits += 1
    if digits > MAX_DIGITS or (digits == 0 and (final or body)):
        raise ChunkedError("invalid chunk size")
    # extensions: *( ";" token [ "=" token ] )
    expect_token = False
    for c in body[digits:]:
        if c in _TCHAR:
            expect_token = False
        elif c in b";=":
            if expect_token:
                raise ChunkedError("invalid chunk extension")
            expect_token = True
        else:
            raise ChunkedError("invalid chunk extension")
    if digits < len(body) and body[digits] != 0x3B:
        raise ChunkedError("invalid chunk extension")
    if final and expect_token:
        raise ChunkedError("invalid chunk extension")
    ext = bytes(body[digits:])
    for part in ext.split(b";")[1:]:
        if part.count(b"=") > 1:
            raise ChunkedError("invalid chunk extension")


def _check_trailer(body: bytes | bytearray, final: bool) -> None:
    colon = body.find(b":")
    name = body if colon < 0 else body[:colon]
    if any(c not in _TCHAR for c in name) or colon == 0 or (final and colon < 0):
        raise ChunkedError("invalid trailer field")
    if colon > 0 and any(c not in _VALUE for c in body[colon + 1 :]):
        raise ChunkedError("invalid trailer field value")

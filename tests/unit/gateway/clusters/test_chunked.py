"""The chunked decoder (``gateway.clusters.chunked``) held to llhttp (httptools): over any
bytes, cut anywhere, it never accepts what llhttp refuses, and it yields the same body
bytes and the same end; canonical encodings (what API servers send) decode to what was
encoded."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.clusters.chunked import MAX_LINE, ChunkedDecoder, ChunkedError

HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


class _Llhttp:
    def __init__(self) -> None:
        self.body = bytearray()
        self.complete = False
        self.failed = False
        self.parser = httptools.HttpResponseParser(self)
        self.parser.feed_data(HEAD)

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True

    def feed(self, data: bytes) -> None:
        if self.failed or self.complete:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            # Bytes after the end are the next message's to llhttp (not a response here):
            # the body itself was complete.
            self.failed = not self.complete


def encode(chunks: list[bytes], exts: list[bytes], trailers: list[bytes]) -> bytes:
    out = bytearray()
    for i, chunk in enumerate(chunks):
        ext = exts[i % len(exts)] if exts else b""
        out += b"%x%s\r\n%s\r\n" % (len(chunk), ext, chunk)
    out += b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"
    return bytes(out)


def cuts(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points})
    pieces, last = [], 0
    for mark in [*marks, len(data)]:
        pieces.append(data[last:mark])
        last = mark
    return [p for p in pieces if p]


chunks_st = st.lists(st.binary(min_size=1, max_size=300), max_size=6)
exts_st = st.lists(st.sampled_from([b"", b";a=b", b";name", b";a=b;c", b";x-y=1.2"]), max_size=3)
trailers_st = st.lists(st.sampled_from([b"X-Trailer: 1", b"Checksum: abc def"]), max_size=2)


@given(chunks_st, exts_st, trailers_st, st.lists(st.integers(0, 5000), max_size=8))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_canonical_encodings_decode_to_what_was_encoded(
    chunks: list[bytes], exts: list[bytes], trailers: list[bytes], points: list[int]
) -> None:
    decoder = ChunkedDecoder()
    body = bytearray()
    for piece in cuts(encode(chunks, exts, trailers), points):
        for out in decoder.feed(piece):
            body += out
    assert decoder.complete and decoder.extra == 0
    assert bytes(body) == b"".join(chunks)


_MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "replace"]),
        st.integers(0, 10_000),
        st.sampled_from(
            [
                b" ",
                b"\t",
                b"\r",
                b"\n",
                b"\x00",
                b";",
                b"=",
                b'"',
                b"0",
                b"f",
                b"g",
                b"-",
                b"+",
                b"x",
                b":",
                b"\x7f",
                b"\xff",
                b"\r\n",
                b"00000000000000000",
            ]
        ),
    ),
    max_size=4,
)


def mutate(data: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, where, piece in mutations:
        at = where % (len(out) + 1)
        if kind == "insert":
            out[at:at] = piece
        elif kind == "delete" and at < len(out):
            del out[at]
        elif kind == "replace" and at < len(out):
            out[at : at + 1] = piece
    return bytes(out)


def _check_against_llhttp(data: bytes, points: list[int]) -> None:
    ours = ChunkedDecoder()
    theirs = _Llhttp()
    body = bytearray()
    for piece in cuts(data, points):
        try:
            out = ours.feed(piece)
        except ChunkedError:
            return  # refusing more than llhttp is allowed; less is not
        theirs.feed(piece)
        for p in out:
            body += p
        # Whatever we passed on, llhttp passed on too, and did not refuse.
        assert not theirs.failed, (data, piece)
        if ours.complete:
            assert theirs.complete, data
            assert bytes(body) == bytes(theirs.body)
            return
        assert not theirs.complete, data
        assert bytes(body) == bytes(theirs.body), data


@given(chunks_st, exts_st, trailers_st, _MUTATIONS, st.lists(st.integers(0, 5000), max_size=8))
@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
def test_never_accepts_what_llhttp_refuses_and_yields_the_same_body(
    chunks: list[bytes],
    exts: list[bytes],
    trailers: list[bytes],
    mutations: list[tuple[str, int, bytes]],
    points: list[int],
) -> None:
    _check_against_llhttp(mutate(encode(chunks, exts, trailers), mutations), points)


@given(st.binary(max_size=200), st.lists(st.integers(0, 300), max_size=4))
@settings(max_examples=1500)
def test_any_bytes(data: bytes, points: list[int]) -> None:
    _check_against_llhttp(data, points)


@pytest.mark.parametrize(
    "data",
    [
        b"5 \r\nhello\r\n0\r\n\r\n",  # whitespace after the size
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",  # bare LF
        b"5\r\nhelloX\r\n0\r\n\r\n",  # data longer than its size
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"1" * 17 + b"\r\n",  # more than 16 digits
        b"5;a\x00b\r\nhello\r\n0\r\n\r\n",  # a control character in an extension
        b'5;q="x"\r\nhello\r\n0\r\n\r\n',  # a quoted string (llhttp takes it; we need not)
        b"5;\r\nhello\r\n0\r\n\r\n",
        b"5;a=\r\nhello\r\n0\r\n\r\n",
        b"0\r\nBad Name: x\r\n\r\n",
        b"0\r\n folded\r\n\r\n",
        b"0\r\nX: a\x01\r\n\r\n",
        b"5;" + b"a" * MAX_LINE + b"\r\n",
    ],
)
def test_refuses(data: bytes) -> None:
    decoder = ChunkedDecoder()
    with pytest.raises(ChunkedError):
        decoder.feed(data)


def test_bytes_after_the_end_are_counted_not_decoded() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1") == [b"abc"]
    assert decoder.complete and decoder.extra == len(b"HTTP/1.1")

"""The red team's findings, pure logic (the end-to-end attacks are in
``tests/integration/test_redteam.py``)."""

from __future__ import annotations

import hpack
from hypothesis import given
from hypothesis import strategies as st

from gateway import http2
from gateway.http2 import PREFACE, Request, ServerConnection, Terminated

POST = [
    (b":method", b"POST"),
    (b":scheme", b"https"),
    (b":authority", b"gw:8443"),
    (b":path", b"/k8s/clusters/c-1/api/v1/namespaces/default/configmaps"),
]


def _started() -> ServerConnection:
    server = ServerConnection()
    server.receive(PREFACE + http2._pack(http2.SETTINGS, 0, 0, b""))
    server.data_to_send()
    return server


def _resets(server: ServerConnection) -> list[tuple[int, int]]:
    out = b"".join(server.data_to_send())
    found = []
    while out:
        length = int.from_bytes(out[:3], "big")
        if out[3] == http2.RST_STREAM:
            found.append((int.from_bytes(out[5:9], "big"), int.from_bytes(out[9:13], "big")))
        out = out[9 + length :]
    return found


# 1. content-length too long for a number


@given(digits=st.integers(min_value=19, max_value=16_000), zeros=st.booleans())  # one frame
def test_a_content_length_of_too_many_digits_is_a_stream_error(digits: int, zeros: bool) -> None:
    server = _started()
    value = b"0" * (digits - 1) + b"7" if zeros else b"9" * digits
    block = hpack.Encoder().encode([*POST, (b"content-length", value)], huffman=False)
    events = server.receive(http2._pack(http2.HEADERS, 0x4, 1, block))
    assert not [e for e in events if isinstance(e, Request)]
    assert _resets(server) == [(1, http2.PROTOCOL_ERROR)]
    assert not [e for e in events if isinstance(e, Terminated)]
    # The connection goes on: the next request is taken.
    block = hpack.Encoder().encode([*POST, (b"content-length", b"2")], huffman=False)
    events = server.receive(http2._pack(http2.HEADERS, 0x4, 3, block))
    [request] = [e for e in events if isinstance(e, Request)]
    assert request.content_length == 2


def test_the_largest_content_length_taken_fits_an_int64() -> None:
    server = _started()
    value = b"9" * http2.MAX_CONTENT_LENGTH_DIGITS
    block = hpack.Encoder().encode([*POST, (b"content-length", value)], huffman=False)
    [request] = server.receive(http2._pack(http2.HEADERS, 0x4, 1, block))
    assert isinstance(request, Request)
    assert request.content_length == int(value) < 2**63

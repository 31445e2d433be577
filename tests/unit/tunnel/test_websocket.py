"""RFC 6455 handshake and framing (tunnel.websocket); interoperability with aiohttp is
checked over real connections in tests/component/test_wsconn.py."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel import websocket, wsconn
from tunnel.websocket import (
    ClientHandshake,
    Close,
    CloseCode,
    FrameReader,
    HandshakeError,
    Opcode,
    Ping,
    Pong,
    WebSocketError,
    encode_close,
    encode_frame,
    encode_parts,
    split_parts,
)

MASK = b"\x01\x02\x03\x04"
MASKERS = [websocket.mask_pure, wsconn.MASK_IN_PLACE]
"""The Python mask (this module's default) and the one connections pass (aiohttp's)."""


def payload_of(items: list[websocket.Item]) -> bytes:
    return b"".join(bytes(item) for item in items if isinstance(item, bytes | bytearray))


def frame(first: int, payload: bytes, mask: bytes | None = MASK) -> bytes:
    """A frame with a raw first byte (FIN, RSV, opcode), built by hand."""
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        head = bytes((first, bit | size))
    elif size < 65536:
        head = struct.pack("!BBH", first, bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, bit | 127, size)
    if not mask:
        return head + payload
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


# -- handshake ------------------------------------------------------------------------


def test_accept_key_matches_the_rfc_example() -> None:
    assert websocket.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def upgrade_headers(**changes: str) -> dict[str, str]:
    headers = {
        "Upgrade": "websocket",
        "Connection": "keep-alive, Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    headers.update(changes)
    return {k: v for k, v in headers.items() if v}


def test_server_accept_answers_a_valid_upgrade() -> None:
    assert websocket.server_accept(upgrade_headers()) == {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Accept": "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
    }


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"Upgrade": ""}, 400),
        ({"Upgrade": "h2c"}, 400),
        ({"Connection": "keep-alive"}, 400),
        ({"Sec-WebSocket-Version": "8"}, 426),
        ({"Sec-WebSocket-Key": ""}, 400),
        ({"Sec-WebSocket-Key": "not base64!"}, 400),
        ({"Sec-WebSocket-Key": "c2hvcnQ="}, 400),
    ],
)
def test_server_accept_refuses_bad_upgrades(changes: dict[str, str], status: int) -> None:
    with pytest.raises(HandshakeError) as caught:
        websocket.server_accept(upgrade_headers(**changes))
    assert caught.value.status == status


def test_client_request_is_an_upgrade_get() -> None:
    raw = websocket.client_request("gw:8443", "/v3/connect", "a2V5", {"Authorization": "Bearer t"})
    assert raw.startswith(b"GET /v3/connect HTTP/1.1\r\nHost: gw:8443\r\n")
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in raw
    assert raw.endswith(b"Authorization: Bearer t\r\n\r\n")
    with pytest.raises(ValueError):
        websocket.client_request("gw", "/", "a2V5", {"X": "a\r\nInjected: 1"})


def answer(key: str, status: str = "101 Switching Protocols", **extra: str) -> bytes:
    lines = [
        f"HTTP/1.1 {status}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {websocket.accept_key(key)}",
        *(f"{k}: {v}" for k, v in extra.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_client_handshake_returns_what_follows_the_head_fed_in_pieces() -> None:
    key = websocket.new_key()
    raw = answer(key) + b"\x82\x00"
    handshake = ClientHandshake(key)
    for byte in raw[:-3]:
        assert handshake.feed(bytes([byte])) is None
    assert handshake.feed(raw[-3:]) == b"\x82\x00"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", 401),
        (b"HTTP/1.1 200 OK\r\n\r\n", 200),
        (b"SSH-2.0-OpenSSH\r\n\r\n", 502),
    ],
)
def test_client_handshake_reports_other_answers(raw: bytes, status: int) -> None:
    with pytest.raises(HandshakeError) as caught:
        ClientHandshake(websocket.new_key()).feed(raw)
    assert caught.value.status == status


def test_client_handshake_checks_the_accept_key_and_extensions() -> None:
    key = websocket.new_key()
    with pytest.raises(HandshakeError, match="Accept"):
        ClientHandshake(key).feed(answer(websocket.new_key()))
    with pytest.raises(HandshakeError, match="extension"):
        ClientHandshake(key).feed(answer(key, **{"Sec-WebSocket-Extensions": "permessage-deflate"}))


def test_client_handshake_bounds_the_head() -> None:
    handshake = ClientHandshake(websocket.new_key())
    with pytest.raises(HandshakeError, match="too large"):
        for _ in range(20):
            handshake.feed(b"X-Filler: " + b"a" * 1000 + b"\r\n")


# -- framing --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70001])
@pytest.mark.parametrize("mask", [None, MASK, b"\xff\x00\xaa\x55"])
@pytest.mark.parametrize("mask_in_place", MASKERS, ids=["pure", "connection's"])
def test_frames_round_trip_at_every_length_encoding(
    size: int, mask: bytes | None, mask_in_place: websocket.Masker
) -> None:
    data = os.urandom(size)
    reader = FrameReader(masked=mask is not None, max_frame=1 << 20, mask_in_place=mask_in_place)
    encoded = encode_frame(Opcode.BINARY, data, mask, mask_in_place)
    if mask is not None:
        assert bytes(encoded) == frame(0x82, data, mask)  # RFC 6455 5.3, byte by byte
    assert payload_of(reader.feed(encoded)) == data


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=70000), max_size=5),
    mask=st.one_of(st.none(), st.binary(min_size=4, max_size=4)),
)
def test_a_frame_from_parts_equals_the_frame_of_their_join(
    parts: list[bytes], mask: bytes | None
) -> None:
    views = [memoryview(p) if i % 2 else p for i, p in enumerate(parts)]
    assert bytes(encode_parts(Opcode.BINARY, views, mask)) == bytes(
        encode_frame(Opcode.BINARY, b"".join(parts), mask)
    )


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=50), max_size=8),
    limit=st.integers(min_value=1, max_value=60),
)
def test_split_parts_keeps_order_and_bounds_groups(parts: list[bytes], limit: int) -> None:
    groups = split_parts(parts, limit)
    assert b"".join(b"".join(bytes(p) for p in g) for g in groups) == b"".join(parts)
    assert all(0 < sum(map(len, g)) <= limit for g in groups)
    assert all(len(p) for g in groups for p in g)


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
    masked=st.booleans(),
)
def test_any_split_gives_the_same_payload(
    messages: list[bytes], cuts: list[int], masked: bool
) -> None:
    stream = b"".join(
        bytes(encode_frame(Opcode.BINARY, m, os.urandom(4) if masked else None)) for m in messages
    )
    reader = FrameReader(masked=masked, max_frame=1 << 20)
    got: list[websocket.Item] = []
    last = 0
    for cut in sorted({min(c, len(stream)) for c in cuts} | {len(stream)}):
        got += reader.feed(memoryview(stream)[last:cut])
        last = cut
    assert payload_of(got) == b"".join(messages)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_the_reader(data: bytes) -> None:
    for masked in (True, False):
        reader = FrameReader(masked=masked, max_frame=1024)
        try:
            reader.feed(data)
        except WebSocketError as exc:
            assert exc.code in set(CloseCode)


def test_control_frames_inside_a_fragmented_message() -> None:
    stream = (
        frame(0x02, b"hel")  # BINARY, not final
        + frame(0x89, b"ping!")
        + frame(0x00, b"lo ")  # CONTINUATION, not final
        + frame(0x8A, b"")
        + frame(0x80, b"world")  # final CONTINUATION
        + frame(0x82, b"!")
    )
    items = FrameReader(masked=True, max_frame=100).feed(stream)
    assert payload_of(items) == b"hello world!"
    assert [i for i in items if not isinstance(i, bytes | bytearray)] == [Ping(b"ping!"), Pong(b"")]


def test_close_frame_ends_reading() -> None:
    reader = FrameReader(masked=True, max_frame=100)
    items = reader.feed(bytes(encode_close(1001, "bye", MASK)) + frame(0x82, b"after"))
    assert items == [Close(1001, "bye")]
    assert reader.closed
    assert reader.feed(frame(0x82, b"more")) == []
    assert FrameReader(masked=False, max_frame=9).feed(b"\x88\x00") == [Close(1005, "")]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (frame(0xC2, b"x"), CloseCode.PROTOCOL_ERROR),  # RSV1 without an extension
        (frame(0x81, b"text"), CloseCode.UNSUPPORTED_DATA),
        (frame(0x83, b""), CloseCode.PROTOCOL_ERROR),  # reserved data opcode
        (frame(0x8B, b""), CloseCode.PROTOCOL_ERROR),  # reserved control opcode
        (frame(0x09, b"x"), CloseCode.PROTOCOL_ERROR),  # fragmented ping
        (frame(0x89, b"x" * 126), CloseCode.PROTOCOL_ERROR),  # long ping
        (frame(0x80, b"x"), CloseCode.PROTOCOL_ERROR),  # continuation without a message
        (frame(0x02, b"a") + frame(0x82, b"b"), CloseCode.PROTOCOL_ERROR),  # new inside old
        (frame(0x82, b"x" * 101), CloseCode.TOO_BIG),
        (frame(0x82, b"x", mask=None), CloseCode.PROTOCOL_ERROR),  # unmasked from a client
        (frame(0x88, b"\x03"), CloseCode.PROTOCOL_ERROR),  # close of one byte
        (frame(0x88, struct.pack("!H", 1005)), CloseCode.PROTOCOL_ERROR),
        (frame(0x88, struct.pack("!H", 999)), CloseCode.PROTOCOL_ERROR),
        (frame(0x88, struct.pack("!H", 1000) + b"\xff"), CloseCode.INVALID_PAYLOAD),
        (b"\x82\xff" + struct.pack("!Q", 1 << 63) + MASK, CloseCode.PROTOCOL_ERROR),
    ],
)
def test_framing_errors_name_their_close_code(raw: bytes, code: CloseCode) -> None:
    with pytest.raises(WebSocketError) as caught:
        FrameReader(masked=True, max_frame=100).feed(raw)
    assert caught.value.code == code


def test_a_client_refuses_masked_server_frames() -> None:
    with pytest.raises(WebSocketError, match="masked server frame"):
        FrameReader(masked=False, max_frame=100).feed(frame(0x82, b"x"))


def test_close_reason_is_cut_to_fit_a_control_frame() -> None:
    encoded = encode_close(1000, "é" * 200)
    assert len(encoded) <= 2 + 125
    (item,) = FrameReader(masked=False, max_frame=9).feed(encoded)
    assert item == Close(1000, "é" * 61)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://gw.example:8443/v3/connect", (True, "gw.example", 8443, "gw.example:8443")),
        ("https://gw.example/v3/connect", (True, "gw.example", 443, "gw.example")),
        ("wss://[::1]:9443/p?q=1", (True, "::1", 9443, "[::1]:9443")),
        ("http://127.0.0.1/v3/connect", (False, "127.0.0.1", 80, "127.0.0.1")),
        ("HTTPS://GW.example:443/x", (True, "gw.example", 443, "gw.example")),
    ],
)
def test_parse_url_gives_where_to_dial(url: str, expected: tuple[bool, str, int, str]) -> None:
    target = websocket.parse_url(url)
    assert (target.secure, target.host, target.port, target.host_header) == expected


def test_parse_url_keeps_path_and_query_and_refuses_other_urls() -> None:
    assert websocket.parse_url("wss://[::1]:9443/p?q=1").path == "/p?q=1"
    assert websocket.parse_url("https://gw").path == "/"
    for bad in ("ftp://gw/", "https:///nohost", "gw:8443", "https://gw:99999/"):
        with pytest.raises(ValueError):
            websocket.parse_url(bad)

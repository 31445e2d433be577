"""Golden bytes and round trips of the frame codec."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tunnel import frames
from tunnel.frames import ErrorCode, FrameType


def test_header_layout_is_fixed():
    assert frames.HEADER_SIZE == 10
    assert frames.encode_accept(7) == bytes([2, 0, 0, 0, 0, 7, 0, 0, 0, 0])


def test_hello_golden_bytes():
    raw = frames.encode_hello(frames.Hello(1, 65536, 16384, 100, b"{}"))
    assert raw == (
        bytes([0, 0])
        + (0).to_bytes(4, "big")
        + (16).to_bytes(4, "big")
        + (1).to_bytes(2, "big")
        + (65536).to_bytes(4, "big")
        + (16384).to_bytes(4, "big")
        + (100).to_bytes(4, "big")
        + b"{}"
    )


def test_data_header_carries_fin_flag():
    assert frames.encode_data_header(3, 5, fin=True) == bytes([3, 1, 0, 0, 0, 3, 0, 0, 0, 5])
    assert frames.encode_data_header(3, 5, fin=False)[1] == 0


def test_reset_reason_is_truncated():
    raw = frames.encode_reset(1, ErrorCode.CANCEL, "x" * 1000)
    payload = raw[frames.HEADER_SIZE :]
    assert frames.decode_reset(payload) == (ErrorCode.CANCEL, "x" * frames.MAX_REASON_BYTES)


def test_unknown_error_code_reads_as_internal_error():
    payload = (999).to_bytes(4, "big") + b"why"
    assert frames.decode_reset(payload) == (ErrorCode.INTERNAL_ERROR, "why")


def test_short_payloads_decode_to_none():
    assert frames.decode_hello(b"\x00" * 13) is None
    assert frames.decode_reset(b"\x00") is None
    assert frames.decode_goaway(b"\x00" * 7) is None
    assert frames.decode_u32(b"\x00" * 3) is None


@given(
    version=st.integers(0, 2**16 - 1),
    window=st.integers(0, 2**32 - 1),
    max_frame=st.integers(0, 2**32 - 1),
    max_streams=st.integers(0, 2**32 - 1),
    metadata=st.binary(max_size=64),
)
def test_hello_round_trip(version, window, max_frame, max_streams, metadata):
    hello = frames.Hello(version, window, max_frame, max_streams, metadata)
    raw = frames.encode_hello(hello)
    ftype, flags, stream_id, length = frames.HEADER.unpack_from(raw)
    assert (ftype, flags, stream_id, length) == (FrameType.HELLO, 0, 0, len(raw) - 10)
    assert frames.decode_hello(raw[10:]) == hello


@given(last=st.integers(0, 2**31 - 1), code=st.sampled_from(ErrorCode), reason=st.text(max_size=50))
def test_goaway_round_trip(last, code, reason):
    raw = frames.encode_goaway(last, code, reason)
    decoded = frames.decode_goaway(raw[10:])
    assert decoded is not None
    assert decoded[:2] == (last, code)
    assert (
        reason.encode("utf-8", "replace")[: frames.MAX_REASON_BYTES].decode("utf-8", "replace")
        == decoded[2]
    )

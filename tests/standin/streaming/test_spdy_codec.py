"""The SPDY/3.1 codec: golden bytes (including a capture of kubectl 1.27), round trips, fuzzing."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from standin import spdy
from standin.spdy import (
    DataFrame,
    FrameDecoder,
    FrameEncoder,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    Setting,
    SettingsFrame,
    SpdyError,
    SynReplyFrame,
    SynStreamFrame,
    UnknownControlFrame,
    WindowUpdateFrame,
)

# What kubectl 1.27 (Go, moby/spdystream, compress/zlib at BestCompression) sent after the 101
# of `kubectl exec web -- echo golden`: SYN_STREAMs for the error, stdout and stderr streams,
# the three header blocks compressed in one zlib context.
KUBECTL_127_EXEC_SYN_STREAMS = bytes.fromhex(
    "80030001000000290000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a0a0a"
    "6800000000ffff800300010000001900000003000000000000c22ac5565c92925f5a02000000ffff8003"
    "00010000001500000005000000000000c229975a5404000000ffff"
)
# And what the stand-in answered (the level-9 zlib output of CPython's zlib, which kubectl
# decoded): SYN_REPLYs, stdout, the FINs, the success Status and GOAWAY.
STANDIN_EXEC_ANSWER = bytes.fromhex(
    "80030002000000140000000178f9e3c6a7c202a6230600000000ffff800300020000000c000000030201"
    "00000000ffff800300020000000c00000005020100000000ffff0000000300000007676f6c64656e0a00"
    "00000301000000000000050100000000000001000000227b226d65746164617461223a7b7d2c22737461"
    "747573223a2253756363657373227d000000010100000080030007000000080000000500000000"
)


def encode_all(frames: list[spdy.Frame]) -> bytes:
    encoder = FrameEncoder()  # one compression context for the whole stream
    return b"".join(encoder.encode(f) for f in frames)


def test_dictionary_is_the_spdy3_dictionary() -> None:
    assert len(spdy.HEADER_DICTIONARY) == 1423
    assert zlib.adler32(spdy.HEADER_DICTIONARY) == 0xE3C6A7C2  # the dictid in every zlib header
    assert spdy.HEADER_DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy.HEADER_DICTIONARY.endswith(b"utf-,*,enq=0.")


def test_decodes_kubectl_syn_streams() -> None:
    frames = FrameDecoder().decode(KUBECTL_127_EXEC_SYN_STREAMS)
    assert frames == [
        SynStreamFrame(stream_id=1, headers=(("streamtype", "error"),)),
        SynStreamFrame(stream_id=3, headers=(("streamtype", "stdout"),)),
        SynStreamFrame(stream_id=5, headers=(("streamtype", "stderr"),)),
    ]
    assert spdy.header_value(frames[0].headers, "streamType") == "error"  # type: ignore[union-attr]


def test_decodes_kubectl_bytes_fed_one_at_a_time() -> None:
    decoder = FrameDecoder()
    frames = []
    for byte in KUBECTL_127_EXEC_SYN_STREAMS:
        frames += decoder.decode(bytes([byte]))
    assert [f.stream_id for f in frames] == [1, 3, 5]  # type: ignore[union-attr]
    assert decoder.buffered == 0


def test_decodes_standin_answer() -> None:
    assert FrameDecoder().decode(STANDIN_EXEC_ANSWER) == [
        SynReplyFrame(1),
        SynReplyFrame(3),
        SynReplyFrame(5),
        DataFrame(3, b"golden\n"),
        DataFrame(3, b"", fin=True),
        DataFrame(5, b"", fin=True),
        DataFrame(1, b'{"metadata":{},"status":"Success"}'),
        DataFrame(1, b"", fin=True),
        GoAwayFrame(5, 0),
    ]


def test_golden_syn_stream_encoding() -> None:
    # Level 0 (stored blocks) makes the compressed bytes independent of the zlib build.
    encoder = FrameEncoder(level=0)
    first = encoder.encode(SynStreamFrame(1, (("streamtype", "error"),)))
    second = encoder.encode(SynStreamFrame(3, (("streamType", "stdout"),)))  # names lowercased
    assert first == bytes.fromhex(
        "80030001000000350000000100000000000078"
        "3fe3c6a7c2001b00e4ff000000010000000a73747265616d74797065000000056572726f72000000ffff"
    )
    assert second == bytes.fromhex(
        "800300010000003000000003000000000000"
        "001c00e3ff000000010000000a73747265616d74797065000000067374646f7574000000ffff"
    )


def test_default_encoding_decompresses_to_the_golden_block() -> None:
    wire = FrameEncoder().encode(SynStreamFrame(1, (("streamtype", "error"),), priority=2))
    version, frame_type, flags_length = struct.unpack(">HHI", wire[:8])
    assert (version, frame_type) == (0x8003, 1)
    assert flags_length == len(wire) - 8
    assert wire[8:18] == bytes.fromhex("00000001 00000000 4000")
    block = bytes.fromhex("00000001 0000000a 73747265616d74797065 00000005 6572726f72")
    assert zlib.decompressobj(zdict=spdy.HEADER_DICTIONARY).decompress(wire[18:]) == block
    # Go compressed the very same block differently; both decode to it.
    go_compressed = KUBECTL_127_EXEC_SYN_STREAMS[18:49]
    assert zlib.decompressobj(zdict=spdy.HEADER_DICTIONARY).decompress(go_compressed) == block


ALL_FRAMES: list[spdy.Frame] = [
    SynStreamFrame(1, (("streamtype", "data"), ("port", "80"), ("requestid", "0"))),
    SynStreamFrame(
        3, (), associated_stream_id=1, priority=7, slot=3, fin=True, unidirectional=True
    ),
    SynReplyFrame(1, (("status", "200"), ("multi", "a\x00b"))),
    SynReplyFrame(3, fin=True),
    RstStreamFrame(5, spdy.RstStatus.CANCEL),
    SettingsFrame((Setting(spdy.SettingsId.INITIAL_WINDOW_SIZE, 65536, 1), Setting(4, 100))),
    SettingsFrame(clear_settings=True),
    PingFrame(1),
    PingFrame(0xFFFFFFFF),
    GoAwayFrame(7, spdy.GoAwayStatus.INTERNAL_ERROR),
    HeadersFrame(1, (("x", ""),), fin=True),
    WindowUpdateFrame(0, 1 << 20),
    WindowUpdateFrame(3, spdy.MAX_WINDOW_DELTA),
    DataFrame(1, b"hello"),
    DataFrame(spdy.MAX_STREAM_ID, b"", fin=True),
    UnknownControlFrame(10, 0, b"credential"),
]


def test_round_trip_every_frame_type() -> None:
    wire = encode_all(ALL_FRAMES)
    assert FrameDecoder().decode(wire) == ALL_FRAMES
    decoder = FrameDecoder()
    split = []
    for i in range(0, len(wire), 7):
        split += decoder.decode(wire[i : i + 7])
    assert split == ALL_FRAMES


def test_large_data_frame() -> None:
    frame = DataFrame(1, bytes(range(256)) * 4096, fin=True)
    assert FrameDecoder().decode(FrameEncoder().encode(frame)) == [frame]
    with pytest.raises(ValueError, match="too large"):
        FrameEncoder().encode(DataFrame(1, bytes(spdy.MAX_FRAME_LENGTH + 1)))


def _control(frame_type: int, payload: bytes, flags: int = 0, version: int = 3) -> bytes:
    return struct.pack(">HHI", 0x8000 | version, frame_type, flags << 24 | len(payload)) + payload


def _syn_stream(block: bytes, stream_id: int = 1) -> bytes:
    deflate = zlib.compressobj(zdict=spdy.HEADER_DICTIONARY)
    compressed = deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)
    return _control(1, struct.pack(">IIBB", stream_id, 0, 0, 0) + compressed)


def _block(*pairs: tuple[bytes, bytes], count: int | None = None) -> bytes:
    out = struct.pack(">I", len(pairs) if count is None else count)
    for name, value in pairs:
        out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return out


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (_control(6, b"\x00\x00\x00\x01", version=2), "version"),
        (_control(6, b"\x00\x00\x01"), "PING"),
        (_control(7, b"\x00" * 4), "GOAWAY"),
        (_control(3, b"\x00" * 8), "RST_STREAM"),
        (_control(9, struct.pack(">II", 1, 0)), "zero delta"),
        (_control(4, struct.pack(">I", 2) + b"\x00" * 8), "SETTINGS"),
        (_control(1, b"\x00" * 9), "short SYN_STREAM"),
        (_control(1, b"\x00" * 10), "stream 0"),
        (_control(2, b"\x00\x00\x00\x01" + b"not zlib at all"), "decompression"),
        (struct.pack(">II", 0, 0), "stream 0"),
        (_syn_stream(_block((b"Upper", b"x"))), "lowercase"),
        (_syn_stream(_block((b"a", b"1"), (b"a", b"2"))), "duplicate"),
        (_syn_stream(_block((b"", b"x"))), "zero-length"),
        (_syn_stream(_block((b"a", b"\x00x"))), "malformed value"),
        (_syn_stream(_block((b"a", b"x\x00\x00y"))), "malformed value"),
        (_syn_stream(_block((b"a", b"x"), count=1000)), "claims"),
        (_syn_stream(_block((b"a", b"x")) + b"junk"), "trailing"),
        (_syn_stream(_block()[:3]), "too short"),
    ],
)
def test_invalid_input_raises_spdy_error(wire: bytes, match: str) -> None:
    decoder = FrameDecoder()
    with pytest.raises(SpdyError, match=match):
        decoder.decode(wire)
    with pytest.raises(SpdyError, match="already failed"):
        decoder.decode(b"")


def test_frames_before_an_error_are_delivered() -> None:
    good = FrameEncoder().encode(PingFrame(1))
    decoder = FrameDecoder()
    decoder.receive_data(good + _control(6, b"\x00"))
    frames = iter(decoder)
    assert next(frames) == PingFrame(1)
    with pytest.raises(SpdyError):
        next(frames)


def test_decompression_bomb_is_refused() -> None:
    bomb = _block((b"a", b"x" * (1 << 20)))
    with pytest.raises(SpdyError, match="too large"):
        FrameDecoder(max_header_block=64 * 1024).decode(_syn_stream(bomb))


def test_oversized_frame_is_refused_before_buffering() -> None:
    with pytest.raises(SpdyError, match="exceeds"):
        FrameDecoder(max_frame_length=1024).decode(struct.pack(">II", 1, 4096))


# -------------------------------------------------------------------------- property tests

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-:", min_size=1, max_size=20)
values = st.lists(
    st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=255), min_size=1, max_size=30),
    max_size=3,
).map("\x00".join)
header_blocks = st.dictionaries(names, values, max_size=6).map(lambda d: tuple(d.items()))
stream_ids = st.integers(1, spdy.MAX_STREAM_ID)
frames = st.one_of(
    st.builds(
        SynStreamFrame,
        stream_ids,
        header_blocks,
        associated_stream_id=st.integers(0, spdy.MAX_STREAM_ID),
        priority=st.integers(0, 7),
        slot=st.integers(0, 255),
        fin=st.booleans(),
        unidirectional=st.booleans(),
    ),
    st.builds(SynReplyFrame, stream_ids, header_blocks, st.booleans()),
    st.builds(HeadersFrame, stream_ids, header_blocks, st.booleans()),
    st.builds(RstStreamFrame, stream_ids, st.integers(1, 2**32 - 1)),
    st.builds(PingFrame, st.integers(0, 2**32 - 1)),
    st.builds(GoAwayFrame, st.integers(0, spdy.MAX_STREAM_ID), st.integers(0, 2**32 - 1)),
    st.builds(
        WindowUpdateFrame, st.integers(0, spdy.MAX_STREAM_ID), st.integers(1, spdy.MAX_WINDOW_DELTA)
    ),
    st.builds(DataFrame, stream_ids, st.binary(max_size=300), st.booleans()),
    st.builds(
        SettingsFrame,
        st.lists(
            st.builds(
                Setting, st.integers(0, 2**24 - 1), st.integers(0, 2**32 - 1), st.integers(0, 255)
            ),
            max_size=4,
        ).map(tuple),
        st.booleans(),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, max_size=12), st.data())
def test_round_trip_any_frames_any_split(sent: list[spdy.Frame], data: st.DataObject) -> None:
    wire = encode_all(sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    decoder = FrameDecoder()
    received: list[spdy.Frame] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        received += decoder.decode(wire[start:end])
    assert received == sent
    assert decoder.buffered == 0


def _decode_all(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(max_header_block=64 * 1024)
    try:
        for chunk in chunks:
            decoder.decode(chunk)
    except SpdyError:
        pass


@settings(max_examples=500, deadline=2000)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_arbitrary_bytes_only_raise_spdy_error(chunks: list[bytes]) -> None:
    _decode_all(chunks)


@settings(max_examples=300, deadline=2000)
@given(st.lists(frames, min_size=1, max_size=6), st.data())
def test_mutated_valid_streams_only_raise_spdy_error(
    sent: list[spdy.Frame], data: st.DataObject
) -> None:
    wire = bytearray(encode_all(sent))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(wire) - 1))
        wire[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    _decode_all([bytes(wire[:cut]), bytes(wire[cut:])])

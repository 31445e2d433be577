"""gateway.front.hpack_tables: RFC 7541's static table and Huffman code, written here, held to
the RFC's own figures and to the ``hpack`` package's public Encoder and Decoder (the
reference: herdgate no longer imports its internal modules)."""

from __future__ import annotations

from fractions import Fraction

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.front.hpack import Decoder, HPACKError
from gateway.front.hpack_tables import (
    EOS,
    HUFFMAN_LENGTHS,
    STATIC_TABLE,
    HuffmanError,
    decode_huffman,
    huffman_codes,
)


def test_the_static_table_is_appendix_a() -> None:
    assert len(STATIC_TABLE) == 61
    assert STATIC_TABLE[0] == (b":authority", b"")
    assert STATIC_TABLE[1] == (b":method", b"GET")
    assert STATIC_TABLE[7] == (b":status", b"200")
    assert STATIC_TABLE[15] == (b"accept-encoding", b"gzip, deflate")
    assert STATIC_TABLE[32] == (b"date", b"")
    assert STATIC_TABLE[60] == (b"www-authenticate", b"")
    names = [name for name, _ in STATIC_TABLE]
    assert all(name.startswith(b":") for name in names[:14])
    assert all(name == name.lower() and not name.startswith(b":") for name in names[14:])


@pytest.mark.parametrize(
    ("symbol", "code", "length"),
    [
        (0, 0x1FF8, 13),
        (1, 0x7FFFD8, 23),
        (9, 0xFFFFEA, 24),
        (10, 0x3FFFFFFC, 30),
        (13, 0x3FFFFFFD, 30),
        (22, 0x3FFFFFFE, 30),
        (26, 0xFFFFFF6, 28),
        (ord(" "), 0x14, 6),
        (ord("0"), 0x0, 5),
        (ord("a"), 0x3, 5),
        (ord("z"), 0x7B, 7),
        (ord("~"), 0x1FFD, 13),
        (255, 0x3FFFFEE, 26),
        (EOS, 0x3FFFFFFF, 30),
    ],
)
def test_codes_are_appendix_bs(symbol: int, code: int, length: int) -> None:
    assert HUFFMAN_LENGTHS[symbol] == length
    assert huffman_codes()[symbol] == code


def test_the_code_is_complete_and_prefix_free() -> None:
    assert len(HUFFMAN_LENGTHS) == 257
    assert sum(Fraction(1, 2**n) for n in HUFFMAN_LENGTHS) == 1  # Kraft: nothing unused
    codes = {format(c, f"0{n}b") for c, n in zip(huffman_codes(), HUFFMAN_LENGTHS, strict=True)}
    assert len(codes) == 257
    for a in codes:
        assert not any(b != a and b.startswith(a) for b in codes)


def test_padding_and_eos_rules_of_section_5_2() -> None:
    assert decode_huffman(b"") == b""
    assert decode_huffman(bytes([0b00000111])) == b"0"  # '0' (00000) and 3 bits of padding
    with pytest.raises(HuffmanError):
        decode_huffman(bytes([0b00000000]))  # padding that is not EOS's ones
    with pytest.raises(HuffmanError):
        decode_huffman(b"\xff")  # 8 bits of padding
    with pytest.raises(HuffmanError):
        decode_huffman(b"\xff\xff\xff\xff")  # EOS itself


# held to the reference: hpack's public Encoder and Decoder

static_fields = st.sampled_from(STATIC_TABLE)
static_names = st.tuples(st.sampled_from([n for n, _ in STATIC_TABLE]), st.binary(max_size=60))
other_fields = st.tuples(
    st.binary(min_size=1, max_size=30).map(lambda b: b.lower()), st.binary(max_size=200)
)
field_lists = st.lists(st.one_of(static_fields, static_names, other_fields), max_size=16)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(field_lists, st.booleans()), min_size=1, max_size=4))
def test_header_lists_decode_as_hpack_decodes_them(blocks: list[tuple[list, bool]]) -> None:
    encoder = hpack.Encoder()
    reference = hpack.Decoder(max_header_list_size=1 << 22)
    ours = Decoder()
    for headers, huffman in blocks:
        wire = encoder.encode(headers, huffman=huffman)
        expected = [(bytes(n), bytes(v)) for n, v in reference.decode(wire, raw=True)]
        assert expected == headers
        assert ours.decode(wire, 1 << 22)[:2] == (expected, True)  # [2]: RFC-valid fields


def _literal(huffman_value: bytes) -> bytes:
    """A literal field without indexing, name ``x``, whose value is ``huffman_value``
    marked as Huffman code (length under 127: one octet)."""
    return b"\x00\x01x" + bytes([0x80 | len(huffman_value)]) + huffman_value


@settings(max_examples=1000, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=40),
        st.binary(max_size=40).map(lambda b: b + b"\xff"),
        st.binary(max_size=40).map(lambda b: b + b"\xff\xff\xff\xff"),
    )
)
def test_any_huffman_string_is_accepted_or_refused_as_hpack_does(data: bytes) -> None:
    try:
        expected: bytes | None = bytes(hpack.Decoder().decode(_literal(data), raw=True)[0][1])
    except hpack.HPACKDecodingError:
        expected = None
    try:
        got: bytes | None = decode_huffman(data)
    except HuffmanError:
        got = None
    assert got == expected
    try:
        fields: list[tuple[bytes, bytes]] | None = Decoder().decode(_literal(data), 1 << 16)[0]
    except HPACKError:
        fields = None
    assert fields == (None if expected is None else [(b"x", expected)])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_what_hpack_huffman_encodes_decodes_to_the_same_octets(value: bytes) -> None:
    wire = hpack.Encoder().encode([(b"x-v", value)], huffman=True)
    assert Decoder().decode(wire, 1 << 16)[:2] == ([(b"x-v", value)], True)

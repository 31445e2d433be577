"""gateway.front.hpack: decoding what the ``hpack`` package encodes, and the reverse."""

from __future__ import annotations

import contextlib
import re

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.front.hpack import (
    TABLE_SIZE_ZERO,
    Decoder,
    HPACKError,
    encode,
    valid_name,
    valid_value,
)

KUBECTL = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"127.0.0.1:8443"),
    (b":path", b"/k8s/clusters/c-1/api/v1/namespaces/default/pods?limit=500"),
    (b"authorization", b"Bearer token-abcde:" + b"x" * 54),
    (b"accept", b"application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),
    (b"user-agent", b"kubectl/v1.32.0 (linux/amd64) kubernetes/abc"),
    (b"accept-encoding", b"gzip"),
]

names = st.binary(min_size=1, max_size=40).map(lambda b: b.lower())
values = st.binary(max_size=300)
fields = st.lists(
    st.one_of(st.tuples(names, values), st.sampled_from(KUBECTL)), min_size=1, max_size=12
)


def test_a_kubectl_request_twice_shares_the_table() -> None:
    encoder = hpack.Encoder()
    decoder = Decoder()
    first = encoder.encode(KUBECTL)
    second = encoder.encode(KUBECTL)
    assert len(second) < 16  # all indexed the second time
    assert decoder.decode(first, 65536) == (KUBECTL, True, True)
    assert decoder.decode(second, 65536) == (KUBECTL, True, True)


_TOKEN = re.compile(rb":?[!#$%&'*+\-.^_`|~0-9a-z]+")


def well_formed(name: bytes, value: bytes) -> bool:
    """RFC 9113 section 8.2.1 with RFC 9110 section 5, written out on its own: a name is a
    lower-case token (``:`` and one for a pseudo-header); a value has no CTL but HTAB and
    no SP or HTAB at either end."""
    if not _TOKEN.fullmatch(name):
        return False
    if any((c < 0x20 and c != 0x09) or c == 0x7F for c in value):
        return False
    return not value or (value[:1] not in (b" ", b"\t") and value[-1:] not in (b" ", b"\t"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(fields, st.booleans(), st.booleans()), min_size=1, max_size=6))
def test_decodes_whatever_hpack_encodes(blocks: list[tuple[list, bool, bool]]) -> None:
    encoder = hpack.Encoder()
    encoder.header_table_size = 1024  # eviction happens
    decoder = Decoder()
    for headers, huffman, sensitive in blocks:
        wire = encoder.encode(
            [
                hpack.HeaderTuple(n, v) if not sensitive else hpack.NeverIndexedHeaderTuple(n, v)
                for n, v in headers
            ],
            huffman=huffman,
        )
        valid = all(well_formed(n, v) for n, v in headers)
        assert decoder.decode(wire, 1 << 20) == (headers, True, valid)


def test_over_the_limit_keeps_the_table_in_step() -> None:
    encoder = hpack.Encoder()
    decoder = Decoder()
    big = [(b"x-big", b"v" * 3000), (b"x-other", b"w" * 100)]
    kept, within, valid = decoder.decode(encoder.encode(big), 2000)
    assert not within and valid
    assert kept == []
    # the next block refers to the entries the first one added
    assert decoder.decode(encoder.encode(big), 1 << 20) == (big, True, True)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"x-note", b"a\r\nimpersonate-user: admin"),
        (b"x-note", b"a\nb"),
        (b"x-note", b"a\rb"),
        (b"x-note", b"a\x00b"),
        (b"x-note", b"a\x01b"),
        (b"x-note", b"a\x7fb"),
        (b"x-note", b" a"),
        (b"x-note", b"a\t"),
        (b"X-Note", b"a"),
        (b"x note", b"a"),
        (b"x:note", b"a"),
        (b"x-note\r\n", b"a"),
        (b"", b"a"),
        (b":", b"a"),
        (b"x(note)", b"a"),
        (b"x-n\xc3\xa9", b"a"),
    ],
)
def test_a_malformed_field_line_is_reported_and_remembered_in_the_table(
    name: bytes, value: bytes
) -> None:
    """RFC 9113 section 8.2.1. An indexed literal is checked when it enters the table;
    the entry's verdict holds whenever a later block refers to it."""
    encoder = hpack.Encoder()
    decoder = Decoder()
    fields = [(b":method", b"GET"), (name, value)]
    assert decoder.decode(encoder.encode(fields, huffman=False), 4096) == (fields, True, False)
    again = encoder.encode(fields)
    assert len(again) == 2  # both indexed: the second from the dynamic table
    assert decoder.decode(again, 4096) == (fields, True, False)
    assert decoder.decode(encoder.encode([(b":method", b"GET")]), 4096)[2]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"x-note", b""),
        (b"x-note", b"a\tb c"),
        (b"x-note", b"caf\xc3\xa9"),  # obs-text
        (b"!#$%&'*+-.^_`|~09az", b"\x80\xff"),
        (b":path", b"/"),
    ],
)
def test_well_formed_field_lines(name: bytes, value: bytes) -> None:
    assert valid_name(name) and valid_value(value)
    assert Decoder().decode(hpack.Encoder().encode([(name, value)]), 4096)[2]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=30), st.binary(max_size=30))
def test_the_checks_agree_with_the_rfc_written_out(name: bytes, value: bytes) -> None:
    assert (valid_name(name) and valid_value(value)) == well_formed(name, value)


@pytest.mark.parametrize(
    "wire",
    [
        b"\x80",  # index 0
        b"\xff\x80",  # truncated integer
        b"\xbf",  # index 62: the dynamic table is empty
        b"\x40\x05ab",  # truncated name
        b"\x3f\xe1\x7f",  # table size above what we allow
        b"\x82\x20",  # size update after a field
        b"\x40\x81\xff\x01a",  # invalid Huffman (EOS)
    ],
)
def test_malformed_blocks_are_errors(wire: bytes) -> None:
    with pytest.raises(HPACKError):
        Decoder().decode(wire, 1 << 20)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_fail_cleanly(wire: bytes) -> None:
    with contextlib.suppress(HPACKError):
        Decoder().decode(wire, 4096)


@given(
    st.sampled_from([200, 201, 204, 304, 404, 422, 500, 503]),
    st.lists(st.tuples(names.filter(lambda n: not n.startswith(b":")), values), max_size=8),
)
def test_hpack_decodes_our_answers(status: int, headers: list[tuple[bytes, bytes]]) -> None:
    block = TABLE_SIZE_ZERO + encode(status, headers)
    decoded = hpack.Decoder().decode(block, raw=True)
    assert decoded == [(b":status", b"%d" % status), *headers]


def test_long_values_use_multibyte_lengths() -> None:
    headers = [(b"x-long", b"a" * 70000), (b"content-type", b"application/json")]
    assert (
        hpack.Decoder(max_header_list_size=1 << 20).decode(encode(200, headers), raw=True)[1:]
        == headers
    )

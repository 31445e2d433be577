"""gateway.hpack_codec: decoding what the ``hpack`` package encodes, and the reverse."""

from __future__ import annotations

import contextlib

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.hpack_codec import TABLE_SIZE_ZERO, Decoder, HPACKError, encode

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
    assert decoder.decode(first, 65536) == (KUBECTL, True)
    assert decoder.decode(second, 65536) == (KUBECTL, True)


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
        assert decoder.decode(wire, 1 << 20) == (headers, True)


def test_over_the_limit_keeps_the_table_in_step() -> None:
    encoder = hpack.Encoder()
    decoder = Decoder()
    big = [(b"x-big", b"v" * 3000), (b"x-other", b"w" * 100)]
    kept, within = decoder.decode(encoder.encode(big), 2000)
    assert not within
    assert kept == []
    # the next block refers to the entries the first one added
    assert decoder.decode(encoder.encode(big), 1 << 20) == (big, True)


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

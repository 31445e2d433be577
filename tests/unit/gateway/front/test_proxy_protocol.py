"""The PROXY protocol parser (gateway.front.proxy_protocol) against haproxy's
specification (proxy-protocol.txt, versions 1 and 2), and fuzzed: never a crash, never a
byte past the header, bounded."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.errors import ConfigError
from config.schema import ServerSettings
from gateway.front import proxy_protocol as pp
from gateway.front.balancers import ProxyPreface, TrustedProxies, read_proxy_header
from gateway.front.proxy_protocol import NEED_MORE, Invalid, ProxyHeader, parse

# -- version 1 (section 2.1) -----------------------------------------------------------

SPEC_V1 = [
    # The examples of section 2.1.
    (
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        ("255.255.255.255", 65535, "255.255.255.255", 65535),
    ),
    (
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        b" ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        (
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            65535,
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            65535,
        ),
    ),
    (b"PROXY UNKNOWN\r\n", (None, 0, None, 0)),
    (
        b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        b" ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        (None, 0, None, 0),
    ),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", ("192.168.0.1", 56324,
                                                           "192.168.0.11", 443)),
]  # fmt: skip


@pytest.mark.parametrize(("line", "want"), SPEC_V1)
def test_v1_examples_of_the_specification(line: bytes, want: tuple[object, ...]) -> None:
    result = parse(line + b"\x16\x03\x01 TLS follows")
    assert isinstance(result, ProxyHeader)
    assert result.consumed == len(line) and result.version == 1
    assert (result.source, result.source_port, result.destination, result.destination_port) == (
        want
    )


def test_the_longest_v1_line_is_107_bytes() -> None:
    longest = SPEC_V1[1][0]
    assert len(longest) == 104  # the TCP6 example; UNKNOWN may fill up to 107
    filler = b"PROXY UNKNOWN " + b"x" * (107 - 16) + b"\r\n"
    assert len(filler) == 107 and isinstance(parse(filler), ProxyHeader)
    assert isinstance(parse(b"PROXY UNKNOWN " + b"x" * (108 - 16) + b"\r\n"), Invalid)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF without CR
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",  # two spaces
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",  # IPv6 addresses under TCP4
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # leading zero
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello: no header
    ],
)
def test_malformed_v1_headers_are_invalid(line: bytes) -> None:
    assert isinstance(parse(line), Invalid)


def test_a_v1_header_in_pieces_needs_more_until_its_crlf() -> None:
    line = SPEC_V1[0][0]
    for cut in range(len(line)):
        assert parse(line[:cut]) is NEED_MORE, cut
    assert isinstance(parse(line), ProxyHeader)


# -- version 2 (section 2.2) -----------------------------------------------------------


def test_v2_tcp4_and_tcp6_as_haproxy_sends_them() -> None:
    four = pp.v2_header("192.0.2.10", "198.51.100.1", 40000, 8443)
    assert four[:12] == b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"  # the signature
    assert four[12] == 0x21 and four[13] == 0x11 and four[14:16] == b"\x00\x0c"
    result = parse(four + b"\x16\x03\x01")
    assert result == ProxyHeader(28, 2, "192.0.2.10", 40000, "198.51.100.1", 8443)
    six = pp.v2_header("2001:db8::1", "2001:db8::2", 1, 2)
    assert six[13] == 0x21 and six[14:16] == b"\x00\x24"
    assert parse(six) == ProxyHeader(52, 2, "2001:db8::1", 1, "2001:db8::2", 2)


def test_v2_tlvs_are_skipped_and_local_keeps_the_peer() -> None:
    tlvs = b"\x01\x00\x02h2" + b"\x04\x00\x00"  # ALPN, NOOP
    result = parse(pp.v2_header("10.1.2.3", "10.0.0.1", 5, 6, tlvs=tlvs) + b"rest")
    assert isinstance(result, ProxyHeader) and result.source == "10.1.2.3"
    assert result.consumed == 16 + 12 + len(tlvs)
    local = parse(pp.v2_header(None) + b"rest")
    assert local == ProxyHeader(16, 2)  # a health check: the balancer's own address
    unspec = pp.V2_SIGNATURE + b"\x21\x00\x00\x00"
    assert parse(unspec) == ProxyHeader(16, 2)
    unix = pp.V2_SIGNATURE + b"\x21\x31" + (216).to_bytes(2, "big") + b"\x00" * 216
    assert parse(unix) == ProxyHeader(232, 2)


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (pp.V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12, "another version"),
        (pp.V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12, "unknown command"),
        (pp.V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\x00" * 12, "datagram"),
        (pp.V2_SIGNATURE + b"\x21\x11\x00\x08" + b"\x00" * 8, "short address"),
        (pp.V2_SIGNATURE + b"\x21\x21\x00\x0c" + b"\x00" * 12, "short address"),
        (pp.V2_SIGNATURE + b"\x21\x11\xff\xff", "longer than"),
        (b"\r\n\r\n\x00\r\nQUIT\r", "not a PROXY"),
    ],
)
def test_malformed_v2_headers_are_invalid(header: bytes, why: str) -> None:
    result = parse(header)
    assert isinstance(result, Invalid) and why in result.reason


def test_a_v2_header_in_pieces_needs_more_until_its_length() -> None:
    header = pp.v2_header("192.0.2.10", "198.51.100.1", 40000, 8443)
    for cut in range(len(header)):
        assert parse(header[:cut]) is NEED_MORE, cut


# -- fuzzing ---------------------------------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_result_and_never_more_than_is_there(data: bytes) -> None:
    result = parse(data)
    if isinstance(result, ProxyHeader):
        assert 0 < result.consumed <= len(data) and result.consumed <= pp.MAX_HEADER
    elif result is NEED_MORE:
        assert len(data) < pp.MAX_HEADER
        assert pp.starts_like_a_header(data) or not data


_prefixes = st.sampled_from([b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", pp.V2_SIGNATURE])


@settings(max_examples=600, deadline=None)
@given(_prefixes, st.binary(max_size=200), st.binary(max_size=64))
def test_header_like_input_never_reads_past_its_end(
    prefix: bytes, body: bytes, tail: bytes
) -> None:
    data = prefix + body
    result = parse(data)
    if isinstance(result, ProxyHeader):
        # What follows the header cannot change it.
        assert parse(data[: result.consumed] + tail) == result


@settings(max_examples=300, deadline=None)
@given(
    st.ip_addresses(v=4) | st.ip_addresses(v=6),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.binary(max_size=40),
)
def test_headers_we_make_are_read_back(
    address: object, sport: int, dport: int, tail: bytes
) -> None:
    source = str(address)
    destination = "127.0.0.1" if ":" not in source else "::1"
    for header in (
        pp.v1_header(source, destination, sport, dport),
        pp.v2_header(source, destination, sport, dport),
    ):
        result = parse(header + tail)
        assert isinstance(result, ProxyHeader)
        assert (result.source, result.source_port, result.consumed) == (source, sport, len(header))


# -- trusted balancers and X-Forwarded-For ---------------------------------------------


def test_forwarded_for_is_believed_only_from_trusted_peers_rightmost_untrusted() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "192.0.2.7"])
    assert not TrustedProxies([])
    assert trusted.client_of("203.0.113.9", [b"1.1.1.1"]) == "203.0.113.9"  # not trusted
    assert trusted.client_of("10.0.0.1", [b"198.51.100.4"]) == "198.51.100.4"
    # A client wrote its own entry first: the balancer appended the real one.
    assert trusted.client_of("10.0.0.1", [b"6.6.6.6, 198.51.100.4"]) == "198.51.100.4"
    # Two trusted hops, several fields, ports and brackets.
    assert trusted.client_of("10.0.0.1", [b"6.6.6.6", b"198.51.100.4:5555, 192.0.2.7"]) == (
        "198.51.100.4"
    )
    assert trusted.client_of("192.0.2.7", [b"[2001:db8::5]:443"]) == "2001:db8::5"
    assert trusted.client_of("10.0.0.1", [b"10.9.9.9, 10.1.1.1"]) == "10.9.9.9"  # all ours
    assert trusted.client_of("10.0.0.1", [b"junk, 10.1.1.1"]) == "10.1.1.1"
    assert trusted.client_of("10.0.0.1", [b"junk"]) == "10.0.0.1"
    assert trusted.trusts("::ffff:10.1.2.3") and not trusted.trusts("not an address")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=5))
def test_any_forwarded_for_gives_an_address(values: list[bytes]) -> None:
    trusted = TrustedProxies(["127.0.0.0/8"])
    client = trusted.client_of("127.0.0.1", values)
    assert str(ipaddress.ip_address(client)) == client  # an address, canonical


# -- reading the header off a socket ----------------------------------------------------


async def _pair(data: bytes) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.sendall(data)
    return a, b


async def test_the_header_is_read_without_taking_a_byte_more() -> None:
    header = pp.v2_header("198.51.100.4", "10.0.0.1", 4242, 8443)
    for wire in (header, pp.v1_header("198.51.100.4", "10.0.0.1", 4242, 8443)):
        a, b = await _pair(wire + b"\x16\x03\x01ClientHello")
        try:
            result = await read_proxy_header(a, 2.0)
            assert result is not None and result.source == "198.51.100.4"
            assert a.recv(100) == b"\x16\x03\x01ClientHello"
        finally:
            a.close()
            b.close()


async def test_a_header_in_pieces_is_waited_for_within_the_timeout() -> None:
    header = pp.v1_header("198.51.100.4", "10.0.0.1", 4242, 8443)
    a, b = await _pair(header[:9])
    try:
        reading = asyncio.ensure_future(read_proxy_header(a, 5.0))
        await asyncio.sleep(0.05)
        b.sendall(header[9:] + b"tail")
        result = await reading
        assert result is not None and result.source_port == 4242
        assert a.recv(10) == b"tail"
        a2, b2 = await _pair(header[:9])  # never finished: None at the timeout
        try:
            assert await read_proxy_header(a2, 0.2) is None
        finally:
            a2.close()
            b2.close()
    finally:
        a.close()
        b.close()


async def test_the_preface_reads_headers_of_trusted_peers_only() -> None:
    preface = ProxyPreface(TrustedProxies(["127.0.0.0/8"]), 1.0)
    a, b = await _pair(pp.v2_header("198.51.100.4", "10.0.0.1", 4242, 8443))
    try:
        assert await preface(a, ("127.0.0.1", 5000)) == ("198.51.100.4", 4242)
        assert await preface(a, ("203.0.113.1", 5000)) == ("203.0.113.1", 5000)  # untouched
    finally:
        a.close()
        b.close()
    a, b = await _pair(b"\x16\x03\x01 a ClientHello without a header")
    try:
        assert await preface(a, ("127.0.0.1", 5000)) is None  # required from a balancer
    finally:
        a.close()
        b.close()
    a, b = await _pair(pp.v2_header(None))
    try:
        assert await preface(a, ("127.0.0.1", 5000)) == ("127.0.0.1", 5000)  # LOCAL
    finally:
        a.close()
        b.close()


# -- settings ---------------------------------------------------------------------------


def test_the_settings_are_checked_at_start() -> None:
    ServerSettings(trusted_proxies=("10.0.0.0/8", "192.0.2.7", "2001:db8::/32")).check()
    with pytest.raises(ConfigError, match="not an IP address or CIDR"):
        ServerSettings(trusted_proxies=("10.0.0.0/33",)).check()
    with pytest.raises(ConfigError, match=r"server\.proxy_protocol"):
        ServerSettings(proxy_protocol=True).check()

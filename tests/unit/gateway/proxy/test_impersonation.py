"""Header rewriting: credentials and client impersonation never pass, identity always does."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.identity import Identity
from gateway.proxy.heads import UnsafeHead
from gateway.proxy.impersonation import (
    client_impersonation,
    extra_header_name,
    forwarded_headers,
    identity_block,
    impersonation_headers,
)

ALICE = Identity("u-alice", "alice", "local://u-alice", groups=("openldap_group://cn=ops",))


@pytest.mark.parametrize(
    "name",
    [b"Impersonate-User", b"impersonate-user", b"IMPERSONATE-GROUP", b"Impersonate-Extra-Scopes",
     b"Impersonate-Uid", b"iMpErSoNaTe-uSeR"],
)  # fmt: skip
def test_client_impersonation_is_dropped_in_any_case(name: bytes) -> None:
    headers = [(name, b"system:admin"), (b"Accept", b"application/json")]
    assert client_impersonation(headers) == [(name, b"system:admin")]
    out = forwarded_headers(headers, keep_impersonation=False, upgrade=False)
    assert out == [(b"Accept", b"application/json")]


@pytest.mark.parametrize(
    "name",
    [b"Authorization", b"authorization", b"Cookie", b"Host", b"Connection", b"Keep-Alive",
     b"Proxy-Authorization", b"TE", b"Transfer-Encoding", b"Upgrade", b"Content-Length",
     b"Expect", b"Proxy-Connection", b"Trailer"],
)  # fmt: skip
def test_credentials_and_hop_by_hop_headers_are_dropped(name: bytes) -> None:
    out = forwarded_headers([(name, b"x"), (b"X-Keep", b"y")], keep_impersonation=False,
                            upgrade=False)  # fmt: skip
    assert out == [(b"X-Keep", b"y")]


def test_headers_named_in_connection_are_dropped() -> None:
    headers = [(b"Connection", b"close, X-Secret"), (b"X-Secret", b"1"), (b"X-Other", b"2")]
    assert forwarded_headers(headers, keep_impersonation=False, upgrade=False) == [
        (b"X-Other", b"2")
    ]


def test_upgrade_keeps_upgrade_headers() -> None:
    headers = [
        (b"Connection", b"Upgrade"),
        (b"Upgrade", b"SPDY/3.1"),
        (b"X-Stream-Protocol-Version", b"v4.channel.k8s.io"),
        (b"Authorization", b"Bearer secret"),
    ]
    out = forwarded_headers(headers, keep_impersonation=False, upgrade=True)
    assert out == [
        (b"Upgrade", b"SPDY/3.1"),
        (b"X-Stream-Protocol-Version", b"v4.channel.k8s.io"),
        (b"Connection", b"Upgrade"),
    ]


def test_admin_impersonation_is_kept_when_asked() -> None:
    headers = [(b"Impersonate-User", b"jane")]
    assert forwarded_headers(headers, keep_impersonation=True, upgrade=False) == headers


def test_identity_headers() -> None:
    assert impersonation_headers(ALICE, "cluster-member") == (
        (b"Impersonate-User", b"u-alice"),
        (b"Impersonate-Group", b"openldap_group://cn=ops"),
        (b"Impersonate-Group", b"herdgate:cluster-member"),
        (b"Impersonate-Group", b"system:authenticated"),
        (b"Impersonate-Extra-username", b"alice"),
        (b"Impersonate-Extra-principalid", b"local://u-alice"),
    )


def test_duplicate_groups_are_sent_once() -> None:
    identity = Identity("u-1", "a", "local://u-1", groups=("system:authenticated", "g", "g"))
    groups = [v for k, v in impersonation_headers(identity, None) if k == b"Impersonate-Group"]
    assert groups == [b"system:authenticated", b"g"]


def test_extra_keys_are_percent_encoded() -> None:
    assert extra_header_name("example.org/scopes") == b"Impersonate-Extra-example.org%2Fscopes"
    assert extra_header_name("a b") == b"Impersonate-Extra-a%20b"


@given(st.text(min_size=1, max_size=40))
def test_identity_values_never_contain_line_breaks(name: str) -> None:
    identity = Identity("u-1", name, f"local://{name}", groups=(name,))
    for key, value in impersonation_headers(identity, "read-only"):
        assert b"\r" not in value and b"\n" not in value and b"\x00" not in value
        assert key.isascii()


@pytest.mark.parametrize(
    "name",
    [b"X-Remote-User", b"x-remote-group", b"X-REMOTE-EXTRA-scopes", b"X-Forwarded-For",
     b"x-forwarded-host", b"X-Forwarded-Proto", b"X-Forwarded-Client-Cert", b"X-Real-Ip",
     b"Forwarded"],
)  # fmt: skip
def test_front_proxy_identity_and_address_claims_are_dropped(name: bytes) -> None:
    out = forwarded_headers(
        [(name, b"system:admin"), (b"X-Keep", b"y")], keep_impersonation=True, upgrade=False
    )
    assert out == [(b"X-Keep", b"y")]


def test_a_bearer_token_as_websocket_subprotocol_is_dropped() -> None:
    headers = [
        (
            b"Sec-WebSocket-Protocol",
            b"v5.channel.k8s.io, base64url.bearer.authorization.k8s.io.dG9r",
        ),
    ]
    assert forwarded_headers(headers, keep_impersonation=False, upgrade=True) == [
        (b"Sec-WebSocket-Protocol", b"v5.channel.k8s.io"),
        (b"Connection", b"Upgrade"),
    ]
    only = [(b"Sec-WebSocket-Protocol", b"base64url.bearer.authorization.k8s.io.dG9r")]
    assert forwarded_headers(only, keep_impersonation=False, upgrade=False) == []


@pytest.mark.parametrize("name", [b"Host", b"Authorization"])
def test_two_host_or_authorization_fields_are_ambiguous(name: bytes) -> None:
    with pytest.raises(UnsafeHead):
        forwarded_headers(
            [(name, b"a"), (b"Accept", b"*/*"), (name.lower(), b"b")],
            keep_impersonation=False,
            upgrade=False,
        )


def test_identity_block_is_the_identity_headers_as_lines() -> None:
    block = identity_block(ALICE, "cluster-member").block
    assert block == b"".join(
        b"%s: %s\r\n" % kv for kv in impersonation_headers(ALICE, "cluster-member")
    )


def test_an_identity_with_line_breaks_cannot_forge_lines() -> None:
    evil = Identity("u-x\r\nImpersonate-Group: system:masters", "x\n", "p\x00", groups=("g\r\n",))
    block = identity_block(evil, None).block
    assert block.count(b"\r\n") == len(impersonation_headers(evil, None))
    assert b"Impersonate-Group: system:masters" not in block.split(b"\r\n")

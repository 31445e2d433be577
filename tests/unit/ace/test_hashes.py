"""gateway.identity.hashing writes token hashes that ace.hashes (the webhook's check) verifies."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from ace import hashes
from gateway.identity import hashing


def test_accepts_what_the_gateway_writes() -> None:
    for _ in range(20):
        secret = hashing.new_secret()
        stored = hashing.hash_token(secret)
        assert hashes.is_supported(stored)
        assert hashes.verify_token(secret, stored)
        assert not hashes.verify_token(secret[:-1], stored)
        assert not hashes.verify_token(secret + "x", stored)


@given(secret=st.text(max_size=80), other=st.text(max_size=80))
def test_agrees_with_gateway_on_any_secret(secret: str, other: str) -> None:
    try:
        stored = hashing.hash_token(secret)
    except UnicodeEncodeError:  # lone surrogates: the gateway cannot hash them either
        return
    assert hashes.verify_token(secret, stored)
    try:
        expected = hashing.verify_token(other, stored)
    except UnicodeEncodeError:
        expected = False
    assert hashes.verify_token(other, stored) == expected


@given(stored=st.text(max_size=120))
def test_never_raises_and_agrees_on_arbitrary_stored_values(stored: str) -> None:
    assert hashes.verify_token("secret", stored) == hashing.verify_token("secret", stored)


def test_malformed_stored_hashes_never_verify() -> None:
    good = hashing.hash_token("s")
    salt_b64, digest_b64 = good.split(":")[2:]
    short = base64.b64encode(base64.b64decode(digest_b64)[:32]).decode()
    for stored in [
        "",
        "plain",
        "$3:1:x",
        "$2:1:a:b",
        "$3:2:" + salt_b64 + ":" + digest_b64,  # unknown version
        "$3:1:!!:??",  # not base64
        f"$3:1:{salt_b64}:{digest_b64}:extra",
        f"$3:1:{salt_b64}:{short}",  # digest of the wrong length
        f"$3:1:{salt_b64}",
        "$1:" + good,
    ]:
        assert not hashes.is_supported(stored)
        assert not hashes.verify_token("s", stored)


def test_lone_surrogate_secret_is_refused_not_raised() -> None:
    assert not hashes.verify_token("\ud800", hashing.hash_token("x"))

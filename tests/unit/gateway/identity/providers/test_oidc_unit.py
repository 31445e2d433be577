"""OIDC provider pieces that need no issuer: settings checks, key selection, claim
mapping, the validation cache, and the shared OAuth helpers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.errors import ConfigError
from config.loader import load
from config.schema import GatewaySettings, OIDCSettings
from gateway.identity.providers.base import ExternalIdentity, InvalidCredentials
from gateway.identity.providers.oauth import (
    DevicePolls,
    code_challenge_s256,
    new_code_verifier,
    read_secret,
)
from gateway.identity.providers.oidc import OIDCProvider, _TokenCache
from gateway.identity.providers.oidc_keys import key_fits

ISSUER = "https://127.0.0.1:1/realms/test"  # nothing listens: any network use would fail


def make(**overrides: Any) -> OIDCProvider:
    values: dict[str, Any] = {"enabled": True, "issuer_url": ISSUER, "client_id": "herdgate"}
    values.update(overrides)
    return OIDCProvider(OIDCSettings(**values))


# ---------------------------------------------------------------------- settings


def test_settings_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        "auth:\n"
        "  oidc:\n"
        "    enabled: true\n"
        "    issuer_url: https://idp.example.com/realms/ops\n"
        "    client_id: herdgate\n"
        "    username_claim: email\n"
        "    groups_prefix: 'oidc:'\n"
        "    signing_algorithms: [RS256, ES256]\n"
        "    leeway: 10s\n"
        "    jwks_cache_ttl: 30m\n"
        "    scopes: [openid, email, groups]\n"
    )
    s = load(
        GatewaySettings,
        path,
        environ={"HERDGATE_AUTH__OIDC__CLIENT_SECRET": "from-env"},
    ).auth.oidc
    assert s.leeway_s == 10
    assert s.jwks_cache_ttl_s == 1800
    assert s.signing_algorithms == ("RS256", "ES256")
    assert s.client_secret == "from-env"
    assert s.groups_prefix == "oidc:"
    make(**{"signing_algorithms": s.signing_algorithms})


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"issuer_url": "http://idp.example.com"}, "auth.oidc.issuer_url"),
        ({"issuer_url": ""}, "auth.oidc.issuer_url"),
        ({"issuer_url": "https://idp.example.com/?x=1"}, "auth.oidc.issuer_url"),
        ({"client_id": ""}, "auth.oidc.client_id"),
        ({"signing_algorithms": ()}, "auth.oidc.signing_algorithms"),
        ({"signing_algorithms": ("RS256", "none")}, "auth.oidc.signing_algorithms"),
        ({"signing_algorithms": ("HS256",)}, "auth.oidc.signing_algorithms"),
        ({"signing_algorithms": ("RS256", "HS512")}, "auth.oidc.signing_algorithms"),
        ({"username_claim": ""}, "auth.oidc.username_claim"),
        ({"client_secret_file": "/nonexistent/secret"}, "auth.oidc.client_secret_file"),
    ],
)
def test_bad_settings_refused(overrides: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        make(**overrides)
    assert info.value.path == path


def test_secret_file_wins(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text("  from-file\n")
    assert read_secret("inline", str(secret), "x") == "from-file"
    assert read_secret("inline", "", "x") == "inline"


# ---------------------------------------------------------------------- keys


RSA = {"kty": "RSA", "kid": "a", "n": "x", "e": "AQAB"}
P256 = {"kty": "EC", "crv": "P-256", "kid": "b", "x": "x", "y": "y"}


@pytest.mark.parametrize(
    ("jwk", "alg", "fits"),
    [
        (RSA, "RS256", True),
        (RSA, "PS384", True),
        (RSA, "ES256", False),
        ({**RSA, "alg": "RS256"}, "RS512", False),
        ({**RSA, "use": "enc"}, "RS256", False),
        ({**RSA, "key_ops": ["encrypt"]}, "RS256", False),
        ({**RSA, "key_ops": ["verify"]}, "RS256", True),
        (P256, "ES256", True),
        (P256, "ES384", False),
        ({**P256, "crv": "P-384"}, "ES384", True),
        (P256, "RS256", False),
        ({"kty": "OKP", "crv": "Ed25519", "x": "x"}, "EdDSA", True),
        ({"kty": "oct", "k": "c2VjcmV0"}, "HS256", False),
        ({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}, "HS256", False),
        (RSA, "HS256", False),
        (RSA, "none", False),
    ],
)
def test_key_fits(jwk: dict[str, Any], alg: str, fits: bool) -> None:
    assert key_fits(jwk, alg) is fits


# ---------------------------------------------------------------------- claims


CLAIMS = {
    "iss": ISSUER,
    "aud": "herdgate",
    "sub": "s-1",
    "email": "bob@example.com",
    "name": "Bob",
    "groups": ["a", "b", "a", ""],
}


def test_identity_defaults() -> None:
    identity = make()._identity(dict(CLAIMS))
    assert identity == ExternalIdentity(
        provider="oidc",
        principal_id="oidc_user://s-1",
        login_name="s-1",
        display_name="Bob",
        groups=("oidc_group://a", "oidc_group://b"),
    )


def test_identity_custom_claims() -> None:
    provider = make(groups_claim="roles", groups_prefix="r:", username_claim="email")
    identity = provider._identity({**CLAIMS, "roles": "admin"})
    assert identity.login_name == "bob@example.com"
    assert identity.groups == ("oidc_group://r:admin",)
    assert make(groups_claim="")._identity(dict(CLAIMS)).groups == ()


@pytest.mark.parametrize("verified", [False, "false", "no", None])
def test_unverified_email_refused(verified: Any) -> None:
    provider = make(username_claim="email")
    with pytest.raises(InvalidCredentials, match="not verified"):
        provider._identity({**CLAIMS, "email_verified": verified})
    for ok in (True, "true"):
        assert provider._identity({**CLAIMS, "email_verified": ok}).login_name == "bob@example.com"
    assert provider._identity(dict(CLAIMS)).login_name == "bob@example.com"  # absent: accepted


async def test_deeply_nested_json_is_invalid() -> None:
    import base64

    def seg(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = seg(b'{"alg": "RS256"}')
    token = header + "." + seg(b"[" * 9000) + ".sig"
    with pytest.raises(InvalidCredentials, match="well-formed"):
        await make().validate_id_token(token)


@pytest.mark.parametrize("groups", [{"a": 1}, [1], "", 5])
def test_identity_odd_groups(groups: Any) -> None:
    claims = {**CLAIMS, "groups": groups}
    if groups == "":
        assert make()._identity(claims).groups == ()
        return
    with pytest.raises(InvalidCredentials, match="groups"):
        make()._identity(claims)


# ---------------------------------------------------------------------- cache


def test_token_cache_expiry_and_lru() -> None:
    identity = ExternalIdentity("oidc", "oidc_user://x", "x")
    cache = _TokenCache(2)
    cache.put(b"a", identity, exp=100)
    cache.put(b"b", identity, exp=100)
    assert cache.get(b"a", now=50) is identity  # a is now most recent
    cache.put(b"c", identity, exp=100)
    assert cache.get(b"b", now=50) is None  # evicted
    assert cache.get(b"a", now=100) is None  # expired
    assert len(cache) == 1
    off = _TokenCache(0)
    off.put(b"a", identity, exp=100)
    assert off.get(b"a", now=0) is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.hex()))
def test_garbage_is_invalid_without_network(text: str) -> None:
    """Arbitrary strings are refused before any fetch (the issuer URL is unreachable)."""
    provider = make()
    with pytest.raises(InvalidCredentials):
        asyncio.run(provider.validate_id_token(text))
    assert provider.stats.discovery_fetches == 0


# ---------------------------------------------------------------------- helpers


def test_pkce_rfc7636_vector() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert code_challenge_s256(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    fresh = new_code_verifier()
    assert 43 <= len(fresh) <= 128
    assert set(fresh) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def test_device_polls_interval_and_slow_down() -> None:
    now = [1000.0]
    polls = DevicePolls(lambda: now[0], limit=2)
    polls.start("d1", interval=5, expires_in=60)
    assert not polls.claim("d1")  # the first poll waits one interval
    now[0] += 5
    assert polls.claim("d1")
    assert not polls.claim("d1")  # claimed: a concurrent caller waits
    polls.slow_down("d1")
    assert polls.interval("d1") == 10
    now[0] += 9
    assert not polls.claim("d1")
    now[0] += 1
    assert polls.claim("d1")
    polls.slow_down("d1", interval=30)  # the server's own interval wins when larger
    assert polls.interval("d1") == 30
    assert polls.claim("unknown")  # another replica's code: poll at once
    polls.start("d2", 5, 60)
    polls.start("d3", 5, 60)
    assert len(polls) == 2  # bounded
    now[0] += 61
    polls.start("d4", 5, 60)
    assert len(polls) == 1  # expired ones pruned
    polls.done("d4")
    assert len(polls) == 0

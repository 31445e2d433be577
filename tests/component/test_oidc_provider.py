"""The OIDC provider against a stand-in issuer over HTTPS: ID token validation, keys,
the validation cache, and the code (PKCE) and device login flows."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from config.schema import OIDCSettings
from config.tls import client_context
from gateway.identity.providers.base import (
    ExternalIdentity,
    InvalidCredentials,
    ProviderUnavailable,
)
from gateway.identity.providers.oauth import code_challenge_s256, new_code_verifier, random_token
from gateway.identity.providers.oidc import OIDCProvider
from tests.fakes.oidc_issuer import FakeIssuer, SigningKey

REDIRECT = "https://gateway.test:8443/v1/auth/oidc/callback"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def issuer(tmp_path: Path) -> AsyncIterator[FakeIssuer]:
    fake = FakeIssuer(tmp_path / "issuer")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def settings_for(issuer: FakeIssuer, **overrides: Any) -> OIDCSettings:
    values: dict[str, Any] = {
        "enabled": True,
        "issuer_url": issuer.url,
        "client_id": issuer.client_id,
        "client_secret": issuer.client_secret,
        "ca_file": issuer.ca_file,
        "redirect_uri": REDIRECT,
        "request_timeout_s": 5.0,
    }
    values.update(overrides)
    return OIDCSettings(**values)


@pytest.fixture
async def make_provider(issuer: FakeIssuer, clock: Clock) -> AsyncIterator[Any]:
    made: list[OIDCProvider] = []

    def make(**overrides: Any) -> OIDCProvider:
        provider = OIDCProvider(settings_for(issuer, **overrides), clock=clock)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()


@pytest.fixture
def provider(make_provider: Any) -> OIDCProvider:
    result: OIDCProvider = make_provider()
    return result


# ---------------------------------------------------------------------- validation


async def test_valid_token_accepted(issuer: FakeIssuer, provider: OIDCProvider) -> None:
    identity = await provider.validate_id_token(issuer.mint())
    assert identity == ExternalIdentity(
        provider="oidc",
        principal_id="oidc_user://u-1234",
        login_name="u-1234",
        display_name="Alice Example",
        groups=("oidc_group://ops", "oidc_group://dev"),
    )
    assert issuer.hits["discovery"] == 1
    assert issuer.hits["jwks"] == 1


async def test_claim_mapping_and_prefixes(issuer: FakeIssuer, make_provider: Any) -> None:
    provider = make_provider(username_claim="email", username_prefix="oidc:", groups_prefix="corp:")
    identity = await provider.validate_id_token(issuer.mint(groups="admins"))
    assert identity.principal_id == "oidc_user://u-1234"
    assert identity.login_name == "oidc:alice@example.com"
    assert identity.groups == ("oidc_group://corp:admins",)
    no_groups = await provider.validate_id_token(issuer.mint(groups=None))
    assert no_groups.groups == ()


async def test_es256_key_and_token_without_kid(issuer: FakeIssuer, clock: Clock) -> None:
    issuer.keys.clear()
    ec_key = issuer.add_key("EC")
    provider = OIDCProvider(settings_for(issuer), clock=clock)
    try:
        assert (await provider.validate_id_token(issuer.mint())).login_name == "u-1234"
        no_kid = issuer.mint(headers={"kid": None})
        assert (await provider.validate_id_token(no_kid)).login_name == "u-1234"
        assert ec_key.alg == "ES256"
    finally:
        await provider.close()


async def test_leeway_tolerates_small_skew(issuer: FakeIssuer, provider: OIDCProvider) -> None:
    now = int(time.time())
    token = issuer.mint(exp=now - 10, iat=now - 300, nbf=now + 10)
    assert (await provider.validate_id_token(token)).login_name == "u-1234"


def _tamper(token: str) -> str:
    head, body, sig = token.split(".")
    middle = len(sig) // 2
    swapped = "A" if sig[middle] != "A" else "B"
    return f"{head}.{body}.{sig[:middle]}{swapped}{sig[middle + 1 :]}"


def _rsa_public_pem(key: SigningKey) -> bytes:
    return key.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _invalid_tokens(issuer: FakeIssuer) -> dict[str, str]:
    now = int(time.time())
    stranger = SigningKey(
        issuer.active_kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"
    )
    claims = issuer.claims()
    return {
        "expired": issuer.mint(exp=now - 120, iat=now - 600),
        "not yet valid": issuer.mint(nbf=now + 300),
        "issued in the future": issuer.mint(iat=now + 300, exp=now + 900),
        "wrong audience": issuer.mint(aud="someone-else"),
        "wrong issuer": issuer.mint(iss="https://evil.example.com/realms/test"),
        "alg none": issuer.mint_raw({"alg": "none", "typ": "JWT"}, claims, b""),
        "alg none with kid": issuer.mint_raw(
            {"alg": "none", "kid": issuer.active_kid}, claims, b""
        ),
        "HS256 with the public key as secret": issuer.mint_hmac(_rsa_public_pem(issuer.active)),
        "unknown kid": issuer.mint(headers={"kid": "not-in-jwks"}),
        "tampered signature": _tamper(issuer.mint()),
        "tampered payload": issuer.mint().split(".")[0]
        + "."
        + issuer.mint(sub="admin").split(".")[1]
        + "."
        + issuer.mint().split(".")[2],
        "signed by another key with a known kid": issuer.mint(key=stranger),
        "multiple audiences without azp": issuer.mint(aud=[issuer.client_id, "other"]),
        "multiple audiences, azp of another client": issuer.mint(
            aud=[issuer.client_id, "other"], azp="other"
        ),
        "no exp": issuer.mint(exp=None),
        "no sub": issuer.mint(sub=None),
        "groups not strings": issuer.mint(groups=[1, 2]),
        "not a JWT": "not.a.jwt",
        "empty": "",
    }


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "not yet valid",
        "issued in the future",
        "wrong audience",
        "wrong issuer",
        "alg none",
        "alg none with kid",
        "HS256 with the public key as secret",
        "unknown kid",
        "tampered signature",
        "tampered payload",
        "signed by another key with a known kid",
        "multiple audiences without azp",
        "multiple audiences, azp of another client",
        "no exp",
        "no sub",
        "groups not strings",
        "not a JWT",
        "empty",
    ],
)
async def test_invalid_tokens_rejected(
    issuer: FakeIssuer, provider: OIDCProvider, case: str
) -> None:
    token = _invalid_tokens(issuer)[case]
    with pytest.raises(InvalidCredentials) as info:
        await provider.validate_id_token(token)
    message = str(info.value)
    for part in token.split("."):
        if len(part) > 8:
            assert part not in message


async def test_multiple_audiences_with_our_azp_accepted(
    issuer: FakeIssuer, provider: OIDCProvider
) -> None:
    token = issuer.mint(aud=[issuer.client_id, "other"], azp=issuer.client_id)
    assert (await provider.validate_id_token(token)).login_name == "u-1234"


async def test_foreign_and_unsigned_tokens_cause_no_key_fetch(
    issuer: FakeIssuer, provider: OIDCProvider
) -> None:
    tokens = _invalid_tokens(issuer)
    for case in ("wrong issuer", "alg none", "HS256 with the public key as secret"):
        with pytest.raises(InvalidCredentials):
            await provider.validate_id_token(tokens[case])
    assert issuer.hits["jwks"] == 0
    assert issuer.hits["discovery"] == 0


async def test_unverified_email_refused_when_it_is_the_username(
    issuer: FakeIssuer, make_provider: Any
) -> None:
    provider = make_provider(username_claim="email")
    with pytest.raises(InvalidCredentials, match="not verified"):
        await provider.validate_id_token(issuer.mint(email_verified=False))
    by_sub = make_provider()
    assert (await by_sub.validate_id_token(issuer.mint(email_verified=False))).login_name


async def test_missing_username_claim(issuer: FakeIssuer, make_provider: Any) -> None:
    provider = make_provider(username_claim="preferred_username")
    with pytest.raises(InvalidCredentials, match="preferred_username"):
        await provider.validate_id_token(issuer.mint(preferred_username=None))


# ---------------------------------------------------------------------- keys


async def test_unknown_kid_refresh_is_rate_limited(
    issuer: FakeIssuer, provider: OIDCProvider, clock: Clock
) -> None:
    await provider.validate_id_token(issuer.mint())
    assert issuer.hits["jwks"] == 1
    with pytest.raises(InvalidCredentials, match="unknown key"):
        await provider.validate_id_token(issuer.mint(headers={"kid": "random-1"}))
    # The first unknown kid was inside the minimum interval of the initial fetch.
    assert issuer.hits["jwks"] == 1
    clock.advance(11)
    flood = [issuer.mint(headers={"kid": f"random-{i}"}) for i in range(50)]
    results = await asyncio.gather(
        *(provider.validate_id_token(t) for t in flood), return_exceptions=True
    )
    assert all(isinstance(r, InvalidCredentials) for r in results)
    assert issuer.hits["jwks"] == 2  # fifty unknown kids, one fetch


async def test_key_rotation_picked_up(
    issuer: FakeIssuer, provider: OIDCProvider, clock: Clock
) -> None:
    await provider.validate_id_token(issuer.mint())
    clock.advance(60)
    new = issuer.rotate("EC")
    identity = await provider.validate_id_token(issuer.mint())
    assert identity.login_name == "u-1234"
    assert issuer.hits["jwks"] == 2
    assert new.kid in {k["kid"] for k in issuer.jwks()["keys"]}


async def test_withdrawn_key_clears_the_validation_cache(
    issuer: FakeIssuer, provider: OIDCProvider, clock: Clock
) -> None:
    old_token = issuer.mint()
    await provider.validate_id_token(old_token)
    await provider.validate_id_token(old_token)
    assert provider.stats.cache_hits == 1
    clock.advance(60)
    issuer.rotate(drop_old=True)
    await provider.validate_id_token(issuer.mint())  # unknown kid: refresh drops the old key
    with pytest.raises(InvalidCredentials):
        await provider.validate_id_token(old_token)


async def test_stale_keys_refreshed_in_background(
    issuer: FakeIssuer, provider: OIDCProvider, clock: Clock
) -> None:
    token = issuer.mint()
    await provider.validate_id_token(token)
    clock.advance(3601)
    await provider.validate_id_token(issuer.mint(jti="2"))
    for _ in range(100):
        if issuer.hits["jwks"] == 2:
            break
        await asyncio.sleep(0.01)
    assert issuer.hits["jwks"] == 2
    assert issuer.hits["discovery"] == 2


async def test_issuer_down_with_cached_keys_still_validates(
    issuer: FakeIssuer, provider: OIDCProvider, clock: Clock
) -> None:
    await provider.validate_id_token(issuer.mint())
    await issuer.stop()
    identity = await provider.validate_id_token(issuer.mint(jti="after-outage"))
    assert identity.login_name == "u-1234"
    clock.advance(3601)  # stale: the background refresh fails, the cached keys stay
    assert (await provider.validate_id_token(issuer.mint(jti="later"))).login_name
    for _ in range(100):
        if provider.stats.jwks_fetch_failures:
            break
        await asyncio.sleep(0.01)
    assert provider.stats.jwks_fetch_failures == 1
    assert (await provider.validate_id_token(issuer.mint(jti="still"))).login_name
    # A key the gateway has never seen cannot be fetched: unavailable, not invalid.
    clock.advance(11)
    with pytest.raises(ProviderUnavailable):
        await provider.validate_id_token(issuer.mint(headers={"kid": "new-while-down"}))


async def test_issuer_down_without_keys_is_unavailable(
    issuer: FakeIssuer, provider: OIDCProvider
) -> None:
    token = issuer.mint()
    await issuer.stop()
    with pytest.raises(ProviderUnavailable):
        await provider.validate_id_token(token)
    # Inside the minimum interval no second connection is attempted.
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable):
        await provider.validate_id_token(token)
    assert time.monotonic() - started < 0.5
    await provider.start()  # logs, does not raise


async def test_issuer_errors_are_unavailable(issuer: FakeIssuer, provider: OIDCProvider) -> None:
    issuer.fail.add("jwks")
    with pytest.raises(ProviderUnavailable, match="HTTP 500"):
        await provider.validate_id_token(issuer.mint())


async def test_discovery_naming_another_issuer_is_refused(
    issuer: FakeIssuer, make_provider: Any
) -> None:
    provider = make_provider(issuer_url=issuer.url + "/")
    with pytest.raises(InvalidCredentials):
        # tokens carry the real issuer, which differs from the configured one
        await provider.validate_id_token(issuer.mint())
    with pytest.raises(ProviderUnavailable, match="another issuer"):
        await provider.validate_id_token(issuer.mint(iss=issuer.url + "/"))


async def test_untrusted_tls_is_unavailable(issuer: FakeIssuer, make_provider: Any) -> None:
    provider = make_provider(ca_file="")
    with pytest.raises(ProviderUnavailable, match="unreachable"):
        await provider.validate_id_token(issuer.mint())


# ---------------------------------------------------------------------- cache


async def test_validation_cache_skips_verification(
    issuer: FakeIssuer, provider: OIDCProvider, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jwt

    calls = 0
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        options = kwargs.get("options") or {}
        if options.get("verify_signature", True):
            calls += 1
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    token = issuer.mint()
    first = await provider.validate_id_token(token)
    for _ in range(5):
        assert await provider.validate_id_token(token) == first
    assert calls == 1
    assert provider.stats.verifications == 1
    assert provider.stats.cache_hits == 5
    # A cached token is forgotten at its exp.
    clock.advance(issuer.token_ttl + 1)
    with pytest.raises(InvalidCredentials):
        # PyJWT checks exp against real time, which has not moved: it is still valid,
        # so use a token that is really expired to show the miss reached the verifier.
        await provider.validate_id_token(issuer.mint(exp=int(time.time()) - 100))
    assert await provider.validate_id_token(token) == first
    assert calls == 3


async def test_validation_cache_is_bounded(issuer: FakeIssuer, make_provider: Any) -> None:
    provider = make_provider(token_cache_size=3)
    tokens = [issuer.mint(jti=str(i)) for i in range(5)]
    for token in tokens:
        await provider.validate_id_token(token)
    await provider.validate_id_token(tokens[0])  # evicted: verified again
    assert provider.stats.verifications == 6
    assert provider.stats.cache_hits == 0


# ---------------------------------------------------------------------- code flow


async def _browser_login(issuer: FakeIssuer, url: str) -> dict[str, str]:
    """Follow the authorization URL like a browser; the fake approves and redirects."""
    ssl_ctx = client_context(ca_file=issuer.ca_file)
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, ssl=ssl_ctx, allow_redirects=False) as resp,
    ):
        assert resp.status == 302, await resp.text()
        location = resp.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def test_code_flow_end_to_end(
    issuer: FakeIssuer, provider: OIDCProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await provider.discover()
    state, nonce, verifier = random_token(), random_token(), new_code_verifier()
    url = provider.authorization_url(state, nonce, code_challenge_s256(verifier))
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["scope"] == ["openid profile email"]
    back = await _browser_login(issuer, url)
    assert back["state"] == state
    identity = await provider.exchange_code(back["code"], verifier, nonce)
    assert identity.principal_id == "oidc_user://u-1234"
    assert identity.groups == ("oidc_group://ops", "oidc_group://dev")
    assert issuer.token_auth == ["basic"]
    assert "client_secret" not in issuer.token_requests[0]
    # The code is single use.
    with pytest.raises(InvalidCredentials):
        await provider.exchange_code(back["code"], verifier, nonce)
    assert issuer.client_secret not in caplog.text


async def test_code_flow_pkce_and_nonce_checked(issuer: FakeIssuer, provider: OIDCProvider) -> None:
    await provider.discover()
    verifier = new_code_verifier()
    url = provider.authorization_url("s", "n-1", code_challenge_s256(verifier))
    back = await _browser_login(issuer, url)
    with pytest.raises(InvalidCredentials, match="invalid or expired"):
        await provider.exchange_code(back["code"], new_code_verifier(), "n-1")
    back = await _browser_login(issuer, url)
    with pytest.raises(InvalidCredentials, match="nonce"):
        await provider.exchange_code(back["code"], verifier, "another-nonce")


async def test_code_flow_client_secret_post_and_public_client(
    issuer: FakeIssuer, make_provider: Any, tmp_path: Path
) -> None:
    issuer.auth_methods = ("client_secret_post",)
    secret_file = tmp_path / "secret"
    secret_file.write_text(issuer.client_secret + "\n")
    provider = make_provider(client_secret="", client_secret_file=str(secret_file))
    await provider.discover()
    verifier = new_code_verifier()
    back = await _browser_login(
        issuer, provider.authorization_url("s", "n", code_challenge_s256(verifier))
    )
    assert (await provider.exchange_code(back["code"], verifier, "n")).login_name == "u-1234"
    assert issuer.token_auth[-1] == "post"

    public = make_provider(client_secret="")
    await public.discover()
    back = await _browser_login(
        issuer, public.authorization_url("s", "n", code_challenge_s256(verifier))
    )
    assert (await public.exchange_code(back["code"], verifier, "n")).login_name == "u-1234"
    assert issuer.token_auth[-1] == "none"


async def test_code_flow_wrong_client_secret_is_unavailable(
    issuer: FakeIssuer, make_provider: Any
) -> None:
    provider = make_provider(client_secret="wrong")
    await provider.discover()
    verifier = new_code_verifier()
    back = await _browser_login(
        issuer, provider.authorization_url("s", "n", code_challenge_s256(verifier))
    )
    with pytest.raises(ProviderUnavailable, match="client credentials"):
        await provider.exchange_code(back["code"], verifier, "n")


async def test_authorization_url_needs_discovery(
    issuer: FakeIssuer, provider: OIDCProvider
) -> None:
    with pytest.raises(ProviderUnavailable, match="discovery"):
        provider.authorization_url("s", "n", "c")
    await provider.start()
    assert provider.discovered
    assert provider.authorization_url("s", "n", "c").startswith(issuer.url + "/authorize?")


# ---------------------------------------------------------------------- device flow


async def test_device_flow_end_to_end(
    issuer: FakeIssuer, provider: OIDCProvider, clock: Clock
) -> None:
    issuer.device_interval = 0
    flow = await provider.start_device_flow()
    assert flow.verification_uri == issuer.url + "/activate"
    assert flow.user_code in flow.verification_uri_complete
    assert flow.interval == 0
    assert await provider.poll_device_flow(flow.device_code) is None
    issuer.approve(flow.user_code)
    identity = await provider.poll_device_flow(flow.device_code)
    assert identity is not None
    assert identity.principal_id == "oidc_user://u-1234"
    grants = [r["grant_type"] for r in issuer.token_requests]
    assert grants == ["urn:ietf:params:oauth:grant-type:device_code"] * 2


async def test_device_flow_slow_down(
    issuer: FakeIssuer, provider: OIDCProvider, clock: Clock
) -> None:
    issuer.device_interval = 0
    flow = await provider.start_device_flow()
    issuer.force_slow_down = True
    assert await provider.poll_device_flow(flow.device_code) is None
    assert provider.device_poll_interval(flow.device_code) == 5
    before = issuer.hits["token"]
    issuer.approve(flow.user_code)
    for _ in range(3):  # too early: answered locally, the issuer is not asked
        assert await provider.poll_device_flow(flow.device_code) is None
    assert issuer.hits["token"] == before
    clock.advance(5)
    assert await provider.poll_device_flow(flow.device_code) is not None
    assert issuer.hits["token"] == before + 1


async def test_device_flow_denied(issuer: FakeIssuer, provider: OIDCProvider) -> None:
    flow = await provider.start_device_flow()
    issuer.approve(flow.user_code, deny=True)
    with pytest.raises(InvalidCredentials, match="denied"):
        await provider.poll_device_flow(flow.device_code)
    with pytest.raises(InvalidCredentials):
        await provider.poll_device_flow(secrets.token_urlsafe(8))  # unknown device code


async def test_device_flow_absent_from_discovery(
    issuer: FakeIssuer, provider: OIDCProvider
) -> None:
    issuer.device_flow = False
    with pytest.raises(ProviderUnavailable, match="device login"):
        await provider.start_device_flow()

"""OpenID Connect: bearer ID tokens, browser login (code + PKCE) and device login.

Validation of an ID token (:meth:`OIDCProvider.validate_id_token`) follows OIDC Core
§3.1.3.7 and kube-apiserver's OIDC authenticator:

* the token's ``iss`` (read before anything else, so tokens of other issuers never
  cause a key fetch) must equal ``issuer_url`` exactly;
* the header's ``alg`` must be in ``signing_algorithms``. ``none`` and HS* can never
  be configured: keys come from a JWKS, and letting a public key act as an HMAC
  secret is the classic RS/HS confusion. Symmetric (``oct``) JWKs are ignored;
* the signature must verify with a JWKS key whose ``kid``, ``kty``/``crv``, ``use``
  and ``alg`` fit the header;
* ``exp``, ``iat``, ``sub``, ``iss`` and ``aud`` are required; ``exp``, ``nbf`` and
  ``iat`` are checked with ``leeway_s``;
* ``aud`` must contain ``client_id`` (kube-apiserver's ``MatchAny``). When ``aud`` has
  more than one value, ``azp`` must be present and equal ``client_id`` (OIDC Core 1.0
  §3.1.3.7 steps 4-5), so a token minted for another client that merely lists us is
  refused. kube-apiserver itself ignores ``azp``; with a single audience we do too
  (the cross-client pattern where ``azp`` names a different, trusted client);
* with ``username_claim: email``, a present ``email_verified`` other than true is
  refused (as kube does);
* the groups claim may be a list of strings or a single string.

Keys and discovery: :mod:`gateway.identity.providers.oidc_keys` (fetched on first use, refreshed
in the background, rate-limited refresh on an unknown ``kid``). When a refresh drops a
key, the validation cache is cleared.

Hot path: a successful validation is cached under the SHA-256 of the token until
the token's ``exp`` (LRU, ``token_cache_size`` entries); a repeated bearer token costs
a hash and a dict lookup. Tokens are never logged and error messages never quote
them.

Login: :meth:`authorization_url` and :meth:`exchange_code` implement the
authorization code flow with PKCE S256 and a nonce; :meth:`start_device_flow` and
:meth:`poll_device_flow` implement RFC 8628 when discovery lists a
``device_authorization_endpoint``. The gateway keeps ``state``, ``nonce`` and the code
verifier between the redirect and the callback (helpers in
:mod:`gateway.identity.providers.oauth`). Groups come from the ID token only: there is no
refresh without a refresh token, so the gateway keeps them until the next login.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import quote, urlencode, urlsplit

import jwt

from config.errors import ConfigError
from config.schema import OIDCSettings
from gateway.identity.providers.base import (
    ExternalIdentity,
    InvalidCredentials,
    ProviderUnavailable,
)
from gateway.identity.providers.oauth import (
    DEVICE_GRANT_TYPE,
    DeviceFlow,
    DevicePolls,
    HttpClient,
    HttpResponse,
    read_secret,
)
from gateway.identity.providers.oidc_keys import Discovery, IssuerKeys, OIDCStats

logger = logging.getLogger(__name__)

PROVIDER = "oidc"
USER_PREFIX = "oidc_user://"
GROUP_PREFIX = "oidc_group://"
MAX_TOKEN_BYTES = 16 * 1024
"""Longer bearer tokens are refused before any parsing."""

ALLOWED_ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
    }
)
"""What ``signing_algorithms`` may contain: asymmetric algorithms only."""

_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]


class _TokenCache:
    """LRU of validated tokens: SHA-256 of the token -> (identity, exp)."""

    def __init__(self, limit: int) -> None:
        self._limit = max(0, limit)
        self._entries: OrderedDict[bytes, tuple[ExternalIdentity, float]] = OrderedDict()

    def get(self, key: bytes, now: float) -> ExternalIdentity | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        identity, exp = entry
        if now >= exp:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return identity

    def put(self, key: bytes, identity: ExternalIdentity, exp: float) -> None:
        if self._limit == 0:
            return
        self._entries[key] = (identity, exp)
        self._entries.move_to_end(key)
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _join_url(base: str, params: dict[str, str]) -> str:
    separator = "&" if urlsplit(base).query else "?"
    return base + separator + urlencode(params, quote_via=quote)


class OIDCProvider:
    """Validates ID tokens of one issuer and runs its login flows.

    ``clock`` (seconds since the epoch) is used for the caches and rate limits;
    tests replace it. Call :meth:`start` at gateway start-up to prefetch discovery
    and keys (failures are logged, not raised), and :meth:`close` at shutdown.
    """

    name = PROVIDER

    def __init__(
        self,
        settings: OIDCSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._issuer = settings.issuer_url
        self._check_settings(settings)
        self._client_secret = read_secret(
            settings.client_secret, settings.client_secret_file, "auth.oidc.client_secret_file"
        )
        self._algorithms = tuple(settings.signing_algorithms)
        self._http = HttpClient(
            "the OIDC issuer",
            provider="oidc",
            ca_file=settings.ca_file,
            connect_timeout_s=settings.connect_timeout_s,
            request_timeout_s=settings.request_timeout_s,
        )
        self._cache = _TokenCache(settings.token_cache_size)
        self._device = DevicePolls(clock)
        self.stats = OIDCStats()
        self._keys = IssuerKeys(settings, self._http, clock, self.stats, self._cache.clear)

    @staticmethod
    def _check_settings(settings: OIDCSettings) -> None:
        issuer = urlsplit(settings.issuer_url)
        if issuer.scheme != "https" or not issuer.netloc:
            raise ConfigError("auth.oidc.issuer_url", "must be an https:// URL")
        if issuer.query or issuer.fragment:
            raise ConfigError("auth.oidc.issuer_url", "must not have a query or fragment")
        if not settings.client_id:
            raise ConfigError("auth.oidc.client_id", "is required")
        if not settings.signing_algorithms:
            raise ConfigError("auth.oidc.signing_algorithms", "must name at least one algorithm")
        for alg in settings.signing_algorithms:
            if alg not in ALLOWED_ALGORITHMS:
                raise ConfigError(
                    "auth.oidc.signing_algorithms",
                    f"{alg!r} is not allowed (allowed: {', '.join(sorted(ALLOWED_ALGORITHMS))})",
                )
        if not settings.username_claim:
            raise ConfigError("auth.oidc.username_claim", "is required")

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Prefetch discovery and keys; an unreachable issuer is logged, not raised."""
        try:
            await self._keys.refresh(force=True)
        except ProviderUnavailable as exc:
            logger.warning("OIDC issuer %s: %s (will retry on demand)", self._issuer, exc)

    async def close(self) -> None:
        await self._keys.close()
        await self._http.close()

    # ------------------------------------------------------------------ tokens

    async def validate_id_token(self, token: str) -> ExternalIdentity:
        """The identity in a bearer ID token.

        Raises ``InvalidCredentials`` (the token is not acceptable; the message never
        quotes it) or ``ProviderUnavailable`` (no key could be obtained from the issuer).
        """
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidCredentials("the token is too long")
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        cached = self._cache.get(key, self._clock())
        if cached is not None:
            self.stats.cache_hits += 1
            return cached
        claims = await self._verify(token)
        identity = self._identity(claims)
        self._cache.put(key, identity, float(claims["exp"]))
        return identity

    async def _verify(self, token: str, nonce: str | None = None) -> dict[str, Any]:
        header, unverified = _peek(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise InvalidCredentials("the token's signing algorithm is not allowed")
        if unverified.get("iss") != self._issuer:
            raise InvalidCredentials("the token was issued by another issuer")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidCredentials("the token is not a well-formed JWT")
        keys = await self._keys.signing_keys(kid, alg)
        claims = self._decode(token, keys, alg)
        self._check_claims(claims, nonce)
        return claims

    def _decode(self, token: str, keys: list[jwt.PyJWK], alg: str) -> dict[str, Any]:
        for index, key in enumerate(keys):
            self.stats.verifications += 1
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key=key,
                    algorithms=[alg],
                    audience=self.settings.client_id,
                    issuer=self._issuer,
                    leeway=self.settings.leeway_s,
                    options={"require": _REQUIRED_CLAIMS},
                )
            except jwt.InvalidSignatureError:
                if index + 1 < len(keys):
                    continue  # no kid: try the next key that fits the algorithm
                raise InvalidCredentials("the token's signature is invalid") from None
            except jwt.ExpiredSignatureError:
                raise InvalidCredentials("the token has expired") from None
            except jwt.ImmatureSignatureError:
                raise InvalidCredentials("the token is not valid yet") from None
            except jwt.InvalidAudienceError:
                raise InvalidCredentials("the token is not meant for this client") from None
            except jwt.InvalidIssuerError:
                raise InvalidCredentials("the token was issued by another issuer") from None
            except jwt.MissingRequiredClaimError as exc:
                raise InvalidCredentials(f"the token lacks the {exc.claim} claim") from None
            except jwt.PyJWTError:
                raise InvalidCredentials("the token is invalid") from None
            return claims
        raise InvalidCredentials("the token's signature is invalid")  # pragma: no cover

    def _check_claims(self, claims: dict[str, Any], nonce: str | None) -> None:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise InvalidCredentials("the token's sub claim is not a string")
        if not isinstance(claims.get("exp"), int | float):
            raise InvalidCredentials("the token's exp claim is not a number")
        aud = claims.get("aud")
        multiple = isinstance(aud, list) and len(aud) > 1
        if multiple and claims.get("azp") != self.settings.client_id:
            raise InvalidCredentials("the token was issued to another client (azp)")
        if nonce is not None and claims.get("nonce") != nonce:
            raise InvalidCredentials("the token's nonce does not match this login")

    def _identity(self, claims: dict[str, Any]) -> ExternalIdentity:
        settings = self.settings
        username = claims.get(settings.username_claim)
        if not isinstance(username, str) or not username:
            raise InvalidCredentials(f"the token lacks the {settings.username_claim} claim")
        if settings.username_claim == "email" and claims.get("email_verified", True) not in (
            True,
            "true",
        ):
            raise InvalidCredentials("the token's email address is not verified")
        groups: tuple[str, ...] = ()
        if settings.groups_claim and settings.groups_claim in claims:
            raw = claims[settings.groups_claim]
            names = [raw] if isinstance(raw, str) else raw
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise InvalidCredentials(
                    f"the token's {settings.groups_claim} claim is not a list of strings"
                )
            seen: dict[str, None] = {}
            for name in names:
                if name:
                    seen[f"{GROUP_PREFIX}{settings.groups_prefix}{name}"] = None
            groups = tuple(seen)
        display = claims.get("name")
        return ExternalIdentity(
            provider=PROVIDER,
            principal_id=USER_PREFIX + claims["sub"],
            login_name=settings.username_prefix + username,
            display_name=display if isinstance(display, str) else "",
            groups=groups,
        )

    # ------------------------------------------------------------------ login flows

    def _scopes(self) -> str:
        scopes = ["openid", *(s for s in self.settings.scopes if s != "openid")]
        return " ".join(scopes)

    @property
    def discovered(self) -> bool:
        """Whether discovery has been read (needed by :meth:`authorization_url`)."""
        return self._keys.current_discovery is not None

    async def discover(self) -> None:
        """Read discovery now if it has not been read; raises ``ProviderUnavailable``."""
        await self._keys.discovery()

    def authorization_url(
        self, state: str, nonce: str, code_challenge: str, redirect_uri: str = ""
    ) -> str:
        """Where to send the browser to log in (authorization code flow, PKCE S256).

        Needs discovery: call :meth:`start` or :meth:`discover` first (raises
        ``ProviderUnavailable`` otherwise). ``redirect_uri`` defaults to the setting.
        """
        discovery = self._keys.current_discovery
        if discovery is None:
            raise ProviderUnavailable("the OIDC issuer's discovery document has not been read")
        redirect = redirect_uri or self.settings.redirect_uri
        if not redirect:
            raise ProviderUnavailable("auth.oidc.redirect_uri is not configured")
        return _join_url(
            discovery.authorization_endpoint,
            {
                "response_type": "code",
                "client_id": self.settings.client_id,
                "redirect_uri": redirect,
                "scope": self._scopes(),
                "state": state,
                "nonce": nonce,
                "code_challenge": code_challenge,
                "code_challenge_method": "S256",
            },
        )

    async def exchange_code(
        self, code: str, code_verifier: str, nonce: str, redirect_uri: str = ""
    ) -> ExternalIdentity:
        """Redeem an authorization code; the returned ID token must carry ``nonce``."""
        discovery = await self._keys.discovery()
        redirect = redirect_uri or self.settings.redirect_uri
        if not redirect:
            raise ProviderUnavailable("auth.oidc.redirect_uri is not configured")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "code_verifier": code_verifier,
        }
        try:
            data = await self._token_request(discovery, form)
        except _Pending:
            raise ProviderUnavailable("the OIDC token endpoint answered out of turn") from None
        return await self._identity_from_token_response(data, nonce)

    async def start_device_flow(self) -> DeviceFlow:
        """Begin a device login (RFC 8628); ``ProviderUnavailable`` if the issuer has none."""
        discovery = await self._keys.discovery()
        if not discovery.device_authorization_endpoint:
            raise ProviderUnavailable("the OIDC issuer does not offer device login")
        form = {"scope": self._scopes()}
        headers = self._client_auth(discovery, form)
        resp = await self._http.request(
            "POST", discovery.device_authorization_endpoint, data=form, headers=headers
        )
        if resp.status != 200:
            self._raise_token_error(resp)
        data = resp.json("the OIDC device endpoint")
        flow = DeviceFlow.parse(data, "the OIDC device endpoint")
        self._device.start(flow.device_code, flow.interval, flow.expires_in)
        return flow

    async def poll_device_flow(self, device_code: str) -> ExternalIdentity | None:
        """The identity once the user approved; None while pending (or polled too early).

        Polls the token endpoint at most once per interval per device code (``slow_down``
        adds 5 s), however often it is called. ``InvalidCredentials`` when the user
        denied, or the code expired or is unknown.
        """
        if not self._device.claim(device_code):
            return None
        discovery = await self._keys.discovery()
        form = {"grant_type": DEVICE_GRANT_TYPE, "device_code": device_code}
        try:
            data = await self._token_request(discovery, form)
        except _Pending as pending:
            if pending.slow_down:
                self._device.slow_down(device_code)
            return None
        except InvalidCredentials:
            self._device.done(device_code)
            raise
        self._device.done(device_code)
        return await self._identity_from_token_response(data, None)

    def device_poll_interval(self, device_code: str) -> float:
        """Seconds the client should wait between polls (grows with ``slow_down``)."""
        return self._device.interval(device_code)

    def _client_auth(self, discovery: Discovery, form: dict[str, str]) -> dict[str, str]:
        """Add client authentication to ``form`` or return the Authorization header."""
        client_id = self.settings.client_id
        secret = self._client_secret
        if not secret:
            form["client_id"] = client_id
            return {}
        methods = discovery.auth_methods
        if "client_secret_basic" in methods or "client_secret_post" not in methods:
            # RFC 6749 §2.3.1: form-encode both parts before base64.
            pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
            encoded = base64.b64encode(pair.encode()).decode()
            return {"Authorization": f"Basic {encoded}"}
        form["client_id"] = client_id
        form["client_secret"] = secret
        return {}

    async def _token_request(self, discovery: Discovery, form: dict[str, str]) -> dict[str, Any]:
        headers = {"Accept": "application/json", **self._client_auth(discovery, form)}
        resp = await self._http.request(
            "POST", discovery.token_endpoint, data=form, headers=headers
        )
        if resp.status == 200:
            return resp.json("the OIDC token endpoint")
        self._raise_token_error(resp)

    def _raise_token_error(self, resp: HttpResponse) -> NoReturn:
        error = ""
        if 400 <= resp.status < 500:
            with contextlib.suppress(ProviderUnavailable):
                value = resp.json("the OIDC token endpoint").get("error")
                error = value if isinstance(value, str) else ""
        if error == "authorization_pending":
            raise _Pending(slow_down=False)
        if error == "slow_down":
            raise _Pending(slow_down=True)
        if error == "access_denied":
            raise InvalidCredentials("the login was denied")
        if error == "expired_token":
            raise InvalidCredentials("the device code has expired; start the login again")
        if error == "invalid_grant":
            raise InvalidCredentials("the authorization code or device code is invalid or expired")
        if error in ("invalid_client", "unauthorized_client"):
            raise ProviderUnavailable("the OIDC issuer rejected herdgate's client credentials")
        detail = f" ({error})" if error else ""
        raise ProviderUnavailable(f"the OIDC token endpoint answered HTTP {resp.status}{detail}")

    async def _identity_from_token_response(
        self, data: dict[str, Any], nonce: str | None
    ) -> ExternalIdentity:
        id_token = data.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise ProviderUnavailable("the OIDC issuer returned no ID token (is 'openid' allowed?)")
        claims = await self._verify(id_token, nonce=nonce)
        return self._identity(claims)


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS, unverified: only to pick the key and to
    refuse foreign or unsigned tokens before any network use. (PyJWT's own parser
    is several times slower; the verified decode still parses strictly.)"""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidCredentials("the token is not a well-formed JWT")
    try:
        decoded = [
            json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
            for part in parts[:2]
        ]
    except (ValueError, TypeError, RecursionError):
        raise InvalidCredentials("the token is not a well-formed JWT") from None
    header, claims = decoded
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidCredentials("the token is not a well-formed JWT")
    return header, claims


class _Pending(Exception):
    def __init__(self, slow_down: bool) -> None:
        super().__init__("authorization pending")
        self.slow_down = slow_down

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

Keys: discovery and JWKS are fetched on first use and re-read in the background
after ``jwks_cache_ttl_s``; while the issuer is down the cached keys stay in use. A
token with an unknown ``kid`` triggers a JWKS refresh at most once per
``jwks_min_refresh_interval_s`` (concurrent requests share one fetch), so a flood of
random ``kid`` values cannot hammer the issuer; rotated keys are picked up this way.
When a refresh drops a key, the validation cache is cleared.

Hot path: a successful validation is cached under the SHA-256 of the token until
the token's ``exp`` (LRU, ``token_cache_size`` entries); a repeated bearer token costs
a hash and a dict lookup. Tokens are never logged and error messages never quote
them.

Login: :meth:`authorization_url` and :meth:`exchange_code` implement the
authorization code flow with PKCE S256 and a nonce; :meth:`start_device_flow` and
:meth:`poll_device_flow` implement RFC 8628 when discovery lists a
``device_authorization_endpoint``. The gateway keeps ``state``, ``nonce`` and the code
verifier between the redirect and the callback (helpers in
:mod:`gateway.providers.oauth`). Groups come from the ID token only: there is no
refresh without a refresh token, so the gateway keeps them until the next login.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import quote, urlencode, urlsplit

import jwt

from config.errors import ConfigError
from config.schema import OIDCSettings
from gateway.providers.base import ExternalIdentity, InvalidCredentials, ProviderUnavailable
from gateway.providers.oauth import (
    DEVICE_GRANT_TYPE,
    DeviceFlow,
    DevicePolls,
    HttpClient,
    HttpResponse,
    read_secret,
)

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

_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]


@dataclass
class OIDCStats:
    """Counters for metrics and tests."""

    verifications: int = 0
    """Signature verifications performed (cache misses that reached a key)."""
    cache_hits: int = 0
    discovery_fetches: int = 0
    jwks_fetches: int = 0
    jwks_fetch_failures: int = 0


@dataclass
class _Keys:
    by_kid: dict[str, list[dict[str, Any]]]
    without_kid: list[dict[str, Any]]
    fetched_at: float
    prepared: dict[tuple[int, str], jwt.PyJWK] = field(default_factory=dict)

    def kids(self) -> set[str]:
        return set(self.by_kid)


@dataclass
class _Discovery:
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    device_authorization_endpoint: str
    auth_methods: tuple[str, ...]
    fetched_at: float


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


def _key_fits(jwk: dict[str, Any], alg: str) -> bool:
    """Whether a JWK may verify a token signed with ``alg`` (never an ``oct`` key)."""
    if jwk.get("use") not in (None, "sig"):
        return False
    ops = jwk.get("key_ops")
    if isinstance(ops, list) and "verify" not in ops:
        return False
    if jwk.get("alg") not in (None, alg):
        return False
    kty = jwk.get("kty")
    if alg.startswith(("RS", "PS")):
        return kty == "RSA"
    if alg in _EC_CURVES:
        return kty == "EC" and jwk.get("crv") == _EC_CURVES[alg]
    if alg == "EdDSA":
        return kty == "OKP" and jwk.get("crv") == "Ed25519"
    return False


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
        self._discovery: _Discovery | None = None
        self._keys: _Keys | None = None
        self._last_fetch_attempt = float("-inf")
        self._fetch_generation = 0
        self._last_fetch_failed = False
        self._fetch_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._cache = _TokenCache(settings.token_cache_size)
        self._device = DevicePolls(clock)
        self.stats = OIDCStats()

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
            await self._refresh_keys(force=True)
        except ProviderUnavailable as exc:
            logger.warning("OIDC issuer %s: %s (will retry on demand)", self._issuer, exc)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task
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
        keys = await self._signing_keys(kid, alg)
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

    # ------------------------------------------------------------------ keys

    async def _signing_keys(self, kid: str | None, alg: str) -> list[jwt.PyJWK]:
        if self._keys is None:
            await self._refresh_keys(force=False)
        elif self._clock() - self._keys.fetched_at >= self.settings.jwks_cache_ttl_s:
            self._refresh_in_background()
        found = self._lookup(kid, alg)
        if found:
            return found
        if kid is None:
            raise InvalidCredentials("no signing key of the issuer fits the token")
        # An unknown kid: the issuer may have rotated its keys. Rate-limited refresh.
        with contextlib.suppress(ProviderUnavailable):
            await self._refresh_keys(force=False)
        found = self._lookup(kid, alg)
        if found:
            return found
        if self._last_fetch_failed:
            raise ProviderUnavailable("the OIDC issuer is unreachable and the token's key is new")
        raise InvalidCredentials("the token was signed with an unknown key")

    def _lookup(self, kid: str | None, alg: str) -> list[jwt.PyJWK]:
        keys = self._keys
        if keys is None:
            return []
        if kid is not None:
            candidates = keys.by_kid.get(kid, [])
        else:
            candidates = [k for group in keys.by_kid.values() for k in group] + keys.without_kid
        out: list[jwt.PyJWK] = []
        for jwk in candidates:
            if not _key_fits(jwk, alg):
                continue
            slot = (id(jwk), alg)
            prepared = keys.prepared.get(slot)
            if prepared is None:
                try:
                    prepared = jwt.PyJWK(jwk, algorithm=alg)
                except (jwt.PyJWTError, ValueError, TypeError):
                    continue  # a malformed key in the set
                keys.prepared[slot] = prepared
            out.append(prepared)
        return out

    def _refresh_in_background(self) -> None:
        if self._background or self._fetch_lock.locked():
            return
        task = asyncio.get_running_loop().create_task(self._background_refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _background_refresh(self) -> None:
        try:
            await self._refresh_keys(force=False)
        except ProviderUnavailable as exc:
            logger.warning("OIDC issuer %s: cannot refresh keys: %s", self._issuer, exc)

    async def _refresh_keys(self, force: bool) -> None:
        """Fetch discovery (when stale) and the JWKS, at most once per minimum interval.

        Raises ``ProviderUnavailable`` when there are no keys at all afterwards.
        """
        generation = self._fetch_generation
        async with self._fetch_lock:
            if self._fetch_generation != generation:
                pass  # another request fetched while this one waited for the lock
            elif (
                force
                or self._clock() - self._last_fetch_attempt
                >= self.settings.jwks_min_refresh_interval_s
            ):
                self._fetch_generation += 1
                self._last_fetch_attempt = self._clock()
                try:
                    await self._fetch()
                    self._last_fetch_failed = False
                except ProviderUnavailable as exc:
                    self._last_fetch_failed = True
                    self.stats.jwks_fetch_failures += 1
                    if self._keys is None:
                        raise
                    logger.warning("OIDC issuer %s: keeping cached keys: %s", self._issuer, exc)
            if self._keys is None:
                raise ProviderUnavailable("the OIDC issuer is unreachable and no keys are cached")

    async def _fetch(self) -> None:
        discovery = await self._ensure_discovery(allow_stale=False)
        self.stats.jwks_fetches += 1
        resp = await self._http.request("GET", discovery.jwks_uri)
        if resp.status != 200:
            raise ProviderUnavailable(f"the OIDC issuer's JWKS answered HTTP {resp.status}")
        data = resp.json("the OIDC issuer's JWKS")
        raw_keys = data.get("keys")
        if not isinstance(raw_keys, list):
            raise ProviderUnavailable("the OIDC issuer's JWKS has no keys list")
        by_kid: dict[str, list[dict[str, Any]]] = {}
        without_kid: list[dict[str, Any]] = []
        for jwk in raw_keys:
            if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
                continue  # symmetric or unknown keys are never used
            kid = jwk.get("kid")
            if isinstance(kid, str):
                by_kid.setdefault(kid, []).append(jwk)
            else:
                without_kid.append(jwk)
        old = self._keys
        self._keys = _Keys(by_kid, without_kid, self._clock())
        if old is not None and old.kids() - self._keys.kids():
            self._cache.clear()  # a key was withdrawn: revalidate every token
            logger.info("OIDC issuer %s withdrew signing keys", self._issuer)

    async def _ensure_discovery(self, allow_stale: bool = True) -> _Discovery:
        current = self._discovery
        if current is not None and (
            allow_stale or self._clock() - current.fetched_at < self.settings.jwks_cache_ttl_s
        ):
            return current
        try:
            self._discovery = await self._fetch_discovery()
        except ProviderUnavailable:
            if current is None:
                raise
            logger.warning("OIDC issuer %s: keeping cached discovery", self._issuer)
        assert self._discovery is not None
        return self._discovery

    async def _fetch_discovery(self) -> _Discovery:
        self.stats.discovery_fetches += 1
        url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        resp = await self._http.request("GET", url)
        if resp.status != 200:
            raise ProviderUnavailable(f"the OIDC discovery document answered HTTP {resp.status}")
        data = resp.json("the OIDC discovery document")
        if data.get("issuer") != self._issuer:
            raise ProviderUnavailable(
                "the OIDC discovery document names another issuer than issuer_url"
            )

        def endpoint(name: str, required: bool = True) -> str:
            value = data.get(name)
            if isinstance(value, str) and urlsplit(value).scheme == "https":
                return value
            if required:
                raise ProviderUnavailable(f"the OIDC discovery document lacks an https {name}")
            return ""  # an optional endpoint that is absent or unusable

        methods = data.get("token_endpoint_auth_methods_supported")
        return _Discovery(
            authorization_endpoint=endpoint("authorization_endpoint"),
            token_endpoint=endpoint("token_endpoint"),
            jwks_uri=endpoint("jwks_uri"),
            device_authorization_endpoint=endpoint("device_authorization_endpoint", False),
            auth_methods=tuple(m for m in methods if isinstance(m, str))
            if isinstance(methods, list)
            else ("client_secret_basic",),
            fetched_at=self._clock(),
        )

    # ------------------------------------------------------------------ login flows

    def _scopes(self) -> str:
        scopes = ["openid", *(s for s in self.settings.scopes if s != "openid")]
        return " ".join(scopes)

    @property
    def discovered(self) -> bool:
        """Whether discovery has been read (needed by :meth:`authorization_url`)."""
        return self._discovery is not None

    async def discover(self) -> None:
        """Read discovery now if it has not been read; raises ``ProviderUnavailable``."""
        await self._ensure_discovery()

    def authorization_url(
        self, state: str, nonce: str, code_challenge: str, redirect_uri: str = ""
    ) -> str:
        """Where to send the browser to log in (authorization code flow, PKCE S256).

        Needs discovery: call :meth:`start` or :meth:`discover` first (raises
        ``ProviderUnavailable`` otherwise). ``redirect_uri`` defaults to the setting.
        """
        if self._discovery is None:
            raise ProviderUnavailable("the OIDC issuer's discovery document has not been read")
        redirect = redirect_uri or self.settings.redirect_uri
        if not redirect:
            raise ProviderUnavailable("auth.oidc.redirect_uri is not configured")
        return _join_url(
            self._discovery.authorization_endpoint,
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
        discovery = await self._ensure_discovery()
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
        discovery = await self._ensure_discovery()
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
        discovery = await self._ensure_discovery()
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

    def _client_auth(self, discovery: _Discovery, form: dict[str, str]) -> dict[str, str]:
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

    async def _token_request(self, discovery: _Discovery, form: dict[str, str]) -> dict[str, Any]:
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

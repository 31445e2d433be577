"""The signing keys and discovery document of one OpenID Connect issuer.

Discovery (``/.well-known/openid-configuration``) and the JWKS are fetched on first use
and re-read in the background after ``jwks_cache_ttl_s``; while the issuer is down the
cached ones stay in use. A token with an unknown ``kid`` triggers a JWKS refresh at most
once per ``jwks_min_refresh_interval_s`` (concurrent requests share one fetch), so a
flood of random ``kid`` values cannot hammer the issuer; rotated keys are picked up this
way. Only asymmetric keys are kept (``oct`` JWKs are dropped), and a key is offered for
a token only when its ``kty``/``crv``, ``use``, ``key_ops`` and ``alg`` fit the token's
algorithm. When a refresh drops a key, ``on_withdrawn`` is called (the provider then
forgets the tokens it had validated).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt

from config.schema import OIDCSettings
from gateway.identity.providers.base import InvalidCredentials, ProviderUnavailable
from gateway.identity.providers.oauth import HttpClient

logger = logging.getLogger(__name__)

_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


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
class Discovery:
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    device_authorization_endpoint: str
    auth_methods: tuple[str, ...]
    fetched_at: float


def key_fits(jwk: dict[str, Any], alg: str) -> bool:
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


class IssuerKeys:
    """Discovery and JWKS of ``settings.issuer_url``, fetched through ``http``."""

    def __init__(
        self,
        settings: OIDCSettings,
        http: HttpClient,
        clock: Callable[[], float],
        stats: OIDCStats,
        on_withdrawn: Callable[[], None],
    ) -> None:
        self.settings = settings
        self._issuer = settings.issuer_url
        self._http = http
        self._clock = clock
        self.stats = stats
        self._on_withdrawn = on_withdrawn
        self.current_discovery: Discovery | None = None
        self._keys: _Keys | None = None
        self._last_fetch_attempt = float("-inf")
        self._fetch_generation = 0
        self._last_fetch_failed = False
        self._fetch_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def signing_keys(self, kid: str | None, alg: str) -> list[jwt.PyJWK]:
        if self._keys is None:
            await self.refresh(force=False)
        elif self._clock() - self._keys.fetched_at >= self.settings.jwks_cache_ttl_s:
            self._refresh_in_background()
        found = self._lookup(kid, alg)
        if found:
            return found
        if kid is None:
            raise InvalidCredentials("no signing key of the issuer fits the token")
        # An unknown kid: the issuer may have rotated its keys. Rate-limited refresh.
        with contextlib.suppress(ProviderUnavailable):
            await self.refresh(force=False)
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
            if not key_fits(jwk, alg):
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
            await self.refresh(force=False)
        except ProviderUnavailable as exc:
            logger.warning("OIDC issuer %s: cannot refresh keys: %s", self._issuer, exc)

    async def refresh(self, force: bool) -> None:
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
        discovery = await self.discovery(allow_stale=False)
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
            self._on_withdrawn()  # a key was withdrawn: revalidate every token
            logger.info("OIDC issuer %s withdrew signing keys", self._issuer)

    async def discovery(self, allow_stale: bool = True) -> Discovery:
        current = self.current_discovery
        if current is not None and (
            allow_stale or self._clock() - current.fetched_at < self.settings.jwks_cache_ttl_s
        ):
            return current
        try:
            self.current_discovery = await self._fetch_discovery()
        except ProviderUnavailable:
            if current is None:
                raise
            logger.warning("OIDC issuer %s: keeping cached discovery", self._issuer)
        assert self.current_discovery is not None
        return self.current_discovery

    async def _fetch_discovery(self) -> Discovery:
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
        return Discovery(
            authorization_endpoint=endpoint("authorization_endpoint"),
            token_endpoint=endpoint("token_endpoint"),
            jwks_uri=endpoint("jwks_uri"),
            device_authorization_endpoint=endpoint("device_authorization_endpoint", False),
            auth_methods=tuple(m for m in methods if isinstance(m, str))
            if isinstance(methods, list)
            else ("client_secret_basic",),
            fetched_at=self._clock(),
        )

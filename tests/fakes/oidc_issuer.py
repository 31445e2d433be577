"""A stand-in OpenID Connect issuer over HTTPS on 127.0.0.1.

Serves discovery, a JWKS of keys generated in the test (rotatable), an authorization
endpoint that approves a configured user at once (redirecting with a code), a token
endpoint (authorization code with a PKCE S256 check, device code grant), and a
device authorization endpoint. :meth:`FakeIssuer.mint` signs ID tokens with any
claims, headers and keys, including deliberately broken ones.

Typical use::

    issuer = FakeIssuer(tmp_path)
    await issuer.start()
    token = issuer.mint(groups=["ops"])
    ...
    await issuer.stop()

A synchronous test (a gateway process configured for it) uses :func:`running_issuer`,
the issuer on a background loop, and :func:`gateway_oidc_settings`, the gateway's
``auth.oidc`` settings for it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.fakes import FakeServer, TestPKI
from tests.fakes.threaded import BackgroundLoop

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class SigningKey:
    kid: str
    key: PrivateKey
    alg: str

    def public_jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": self.alg})
        return jwk


@dataclass
class _Grant:
    claims: dict[str, Any]
    client_id: str
    redirect_uri: str = ""
    nonce: str = ""
    code_challenge: str = ""
    code_challenge_method: str = ""


@dataclass
class _DeviceGrant:
    user_code: str
    claims: dict[str, Any]
    expires_at: float
    approved: bool = False
    denied: bool = False
    last_poll: float = 0.0


@dataclass
class FakeIssuer:
    directory: Path
    client_id: str = "herdgate"
    client_secret: str = "issuer-secret"
    path: str = "/realms/test"
    """Path of the issuer URL (OIDC allows a path component)."""
    device_flow: bool = True
    """Whether discovery lists a device authorization endpoint."""
    consent_page: bool = False
    """The authorization endpoint answers with a page whose "Approve" link leads back,
    as a real provider's login page does (the browser's way back then starts on the
    provider's site), instead of redirecting at once."""
    device_interval: int = 0
    """``interval`` sent with a device code; polling faster gets ``slow_down``."""
    auth_methods: tuple[str, ...] = ("client_secret_basic", "client_secret_post")
    user: dict[str, Any] = field(
        default_factory=lambda: {
            "sub": "u-1234",
            "email": "alice@example.com",
            "email_verified": True,
            "name": "Alice Example",
            "preferred_username": "alice",
            "groups": ["ops", "dev"],
        }
    )
    """Claims of the user the authorization endpoint and device flow approve."""
    token_ttl: int = 300

    hits: Counter[str] = field(default_factory=Counter)
    """Requests per endpoint: discovery, jwks, authorize, token, device."""
    keys: dict[str, SigningKey] = field(default_factory=dict)
    """Published keys by kid."""
    active_kid: str = ""
    fail: set[str] = field(default_factory=set)
    """Endpoints (as in ``hits``) that answer HTTP 500."""
    force_slow_down: bool = False
    """Answer the next device poll with ``slow_down``."""
    token_requests: list[dict[str, str]] = field(default_factory=list)
    """Form fields of token requests (secrets included: tests only)."""
    token_auth: list[str] = field(default_factory=list)
    """How each token request authenticated: basic, post or none."""

    def __post_init__(self) -> None:
        self.pki = TestPKI.create(self.directory)
        self._server = FakeServer(self._app(), self.pki)
        self._codes: dict[str, _Grant] = {}
        self._devices: dict[str, _DeviceGrant] = {}
        self.add_key()

    # ------------------------------------------------------------------ set-up

    @property
    def url(self) -> str:
        """The issuer identifier (what tokens carry in ``iss``)."""
        return self._server.base_url + self.path

    @property
    def ca_file(self) -> str:
        return str(self.pki.ca_file)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    def add_key(self, kind: str = "RSA", kid: str = "", activate: bool = True) -> SigningKey:
        """Generate and publish a key (``RSA``, ``EC`` or ``EC384``)."""
        key: PrivateKey
        if kind == "RSA":
            key, alg = rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"
        elif kind == "EC":
            key, alg = ec.generate_private_key(ec.SECP256R1()), "ES256"
        elif kind == "EC384":
            key, alg = ec.generate_private_key(ec.SECP384R1()), "ES384"
        else:
            raise ValueError(kind)
        signing = SigningKey(kid or f"k-{secrets.token_hex(4)}", key, alg)
        self.keys[signing.kid] = signing
        if activate:
            self.active_kid = signing.kid
        return signing

    def rotate(self, kind: str = "RSA", drop_old: bool = False) -> SigningKey:
        """Publish a new key and sign with it from now on (optionally withdraw the others)."""
        old = list(self.keys)
        new = self.add_key(kind)
        if drop_old:
            for kid in old:
                del self.keys[kid]
        return new

    @property
    def active(self) -> SigningKey:
        return self.keys[self.active_kid]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys.values()]}

    # ------------------------------------------------------------------ tokens

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Default ID token claims for the configured user; ``None`` removes a claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": self.client_id,
            "iat": now,
            "exp": now + self.token_ttl,
            **self.user,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self,
        *,
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """An ID token signed with ``key`` (default: the active key); ``headers`` are merged
        over ``{"alg", "kid", "typ"}`` (``kid: None`` removes it)."""
        signing = key or self.active
        header: dict[str, Any] = {"alg": signing.alg, "kid": signing.kid, "typ": "JWT"}
        header.update(headers or {})
        header = {k: v for k, v in header.items() if v is not None}
        return jwt.encode(self.claims(**claims), signing.key, algorithm=signing.alg, headers=header)

    def mint_raw(self, header: dict[str, Any], payload: dict[str, Any], signature: bytes) -> str:
        """A JWT with exactly this header, payload and signature bytes."""
        head = b64url(json.dumps(header).encode())
        body = b64url(json.dumps(payload).encode())
        return f"{head}.{body}.{b64url(signature)}"

    def mint_hmac(self, secret: bytes, alg: str = "HS256", **claims: Any) -> str:
        """An HS256 token signed with ``secret`` (e.g. the RSA public key's PEM)."""
        header = {"alg": alg, "typ": "JWT", "kid": self.active_kid}
        head = b64url(json.dumps(header).encode())
        body = b64url(json.dumps(self.claims(**claims)).encode())
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
        mac = hmac.new(secret, f"{head}.{body}".encode(), digest[alg]).digest()
        return f"{head}.{body}.{b64url(mac)}"

    # ------------------------------------------------------------------ device flow

    def approve(self, user_code: str, deny: bool = False) -> None:
        """The user entered ``user_code`` and approved (or denied) the login."""
        for grant in self._devices.values():
            if grant.user_code == user_code:
                grant.approved = not deny
                grant.denied = deny
                return
        raise KeyError(user_code)

    # ------------------------------------------------------------------ HTTP

    def _app(self) -> web.Application:
        app = web.Application()
        prefix = self.path
        app.router.add_get(prefix + "/.well-known/openid-configuration", self._discovery)
        app.router.add_get(prefix + "/jwks", self._jwks)
        app.router.add_get(prefix + "/authorize", self._authorize)
        app.router.add_post(prefix + "/token", self._token)
        app.router.add_post(prefix + "/device", self._device)
        return app

    def _count(self, name: str) -> None:
        self.hits[name] += 1
        if name in self.fail:
            raise web.HTTPInternalServerError(text="injected failure")

    async def _discovery(self, request: web.Request) -> web.Response:
        self._count("discovery")
        doc: dict[str, Any] = {
            "issuer": self.url,
            "authorization_endpoint": self.url + "/authorize",
            "token_endpoint": self.url + "/token",
            "jwks_uri": self.url + "/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": list(self.auth_methods),
            "grant_types_supported": ["authorization_code", DEVICE_GRANT],
        }
        if self.device_flow:
            doc["device_authorization_endpoint"] = self.url + "/device"
        return web.json_response(doc)

    async def _jwks(self, request: web.Request) -> web.Response:
        self._count("jwks")
        return web.json_response(self.jwks())

    async def _authorize(self, request: web.Request) -> web.Response:
        """Approve the configured user at once and redirect back with a code."""
        self._count("authorize")
        q = request.query
        if q.get("response_type") != "code" or q.get("client_id") != self.client_id:
            return web.json_response({"error": "invalid_request"}, status=400)
        if "openid" not in q.get("scope", "").split():
            return web.json_response({"error": "invalid_scope"}, status=400)
        code = secrets.token_urlsafe(16)
        self._codes[code] = _Grant(
            claims=dict(self.user),
            client_id=q["client_id"],
            redirect_uri=q.get("redirect_uri", ""),
            nonce=q.get("nonce", ""),
            code_challenge=q.get("code_challenge", ""),
            code_challenge_method=q.get("code_challenge_method", ""),
        )
        params = {"code": code}
        if "state" in q:
            params["state"] = q["state"]
        back = q.get("redirect_uri", "") + "?" + urlencode(params)
        if self.consent_page:
            page = f'<!doctype html><a id="approve" href="{html.escape(back)}">Approve</a>'
            return web.Response(text=page, content_type="text/html")
        raise web.HTTPFound(back)

    def _client(self, request: web.Request, form: dict[str, str]) -> str | None:
        """The authenticated client id, or None when authentication failed."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            self.token_auth.append("basic")
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            ok = user == self.client_id and password == self.client_secret
            return user if ok else None
        if "client_secret" in form:
            self.token_auth.append("post")
            ok = form.get("client_id") == self.client_id and form["client_secret"] == (
                self.client_secret
            )
            return form.get("client_id") if ok else None
        self.token_auth.append("none")
        return form.get("client_id") if form.get("client_id") == self.client_id else None

    async def _token(self, request: web.Request) -> web.Response:
        self._count("token")
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.token_requests.append(form)
        client = self._client(request, form)
        if client is None:
            return web.json_response({"error": "invalid_client"}, status=401)
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._code_grant(client, form)
        if grant_type == DEVICE_GRANT:
            return self._device_grant(client, form)
        return web.json_response({"error": "unsupported_grant_type"}, status=400)

    def _code_grant(self, client: str, form: dict[str, str]) -> web.Response:
        grant = self._codes.pop(form.get("code", ""), None)
        if grant is None or grant.client_id != client:
            return web.json_response({"error": "invalid_grant"}, status=400)
        if grant.redirect_uri != form.get("redirect_uri", ""):
            return web.json_response({"error": "invalid_grant"}, status=400)
        if grant.code_challenge:
            verifier = form.get("code_verifier", "")
            computed = b64url(hashlib.sha256(verifier.encode()).digest())
            if grant.code_challenge_method != "S256" or computed != grant.code_challenge:
                return web.json_response(
                    {"error": "invalid_grant", "error_description": "PKCE check failed"},
                    status=400,
                )
        extra = {"nonce": grant.nonce} if grant.nonce else {}
        return self._tokens(grant.claims, **extra)

    def _tokens(self, user: dict[str, Any], **extra: Any) -> web.Response:
        id_token = self.mint(**{**user, **extra})
        return web.json_response(
            {
                "access_token": secrets.token_urlsafe(24),
                "token_type": "Bearer",
                "expires_in": self.token_ttl,
                "id_token": id_token,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def _device(self, request: web.Request) -> web.Response:
        self._count("device")
        form = {k: str(v) for k, v in (await request.post()).items()}
        if self._client(request, form) is None:
            return web.json_response({"error": "invalid_client"}, status=401)
        device_code = secrets.token_urlsafe(24)
        user_code = f"{secrets.token_hex(2).upper()}-{secrets.token_hex(2).upper()}"
        self._devices[device_code] = _DeviceGrant(
            user_code, dict(self.user), time.monotonic() + 600
        )
        verification = self.url + "/activate"
        return web.json_response(
            {
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": verification,
                "verification_uri_complete": f"{verification}?user_code={user_code}",
                "expires_in": 600,
                "interval": self.device_interval,
            }
        )

    def _device_grant(self, client: str, form: dict[str, str]) -> web.Response:
        grant = self._devices.get(form.get("device_code", ""))
        if grant is None:
            return web.json_response({"error": "invalid_grant"}, status=400)
        now = time.monotonic()
        too_fast = now - grant.last_poll < self.device_interval
        grant.last_poll = now
        if grant.expires_at <= now:
            return web.json_response({"error": "expired_token"}, status=400)
        if self.force_slow_down or too_fast:
            self.force_slow_down = False
            return web.json_response({"error": "slow_down"}, status=400)
        if grant.denied:
            return web.json_response({"error": "access_denied"}, status=400)
        if not grant.approved:
            return web.json_response({"error": "authorization_pending"}, status=400)
        del self._devices[form["device_code"]]
        return self._tokens(grant.claims)


@contextmanager
def running_issuer(directory: Path, **options: Any) -> Iterator[tuple[FakeIssuer, BackgroundLoop]]:
    """A ``FakeIssuer(directory, **options)`` serving from a background loop (for tests
    that are not coroutines), stopped at the end with its loop."""
    loop = BackgroundLoop()
    try:
        issuer = FakeIssuer(directory, **options)
        loop.run(issuer.start())
        try:
            yield issuer, loop
        finally:
            loop.run(issuer.stop())
    finally:
        loop.close()


def gateway_oidc_settings(issuer: FakeIssuer, **settings: Any) -> dict[str, Any]:
    """The gateway's settings document logging in with ``issuer`` (``auth.oidc``: on,
    its URL, client, CA, the user named by ``email``), ``settings`` added or replacing."""
    oidc = {
        "enabled": True,
        "issuer_url": issuer.url,
        "client_id": issuer.client_id,
        "client_secret": issuer.client_secret,
        "ca_file": issuer.ca_file,
        "username_claim": "email",
        **settings,
    }
    return {"auth": {"oidc": oidc}}

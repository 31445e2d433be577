"""Authentication the way kube-apiserver's union authenticator does it.

Order: client certificate (`--client-ca-file`), bearer token from `--token-auth-file`, then the
TokenReview webhook. A successful result gets `system:authenticated` added to its groups
(apiserver's AuthenticatedGroupAdder).
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import json
import logging
import re
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from config.tls import client_context

log = logging.getLogger(__name__)

ALL_AUTHENTICATED = "system:authenticated"
ALL_UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = "system:anonymous"


@dataclass(frozen=True)
class UserInfo:
    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """`authentication.k8s.io/v1` UserInfo (every field omitempty)."""
        out: dict[str, Any] = {}
        if self.username:
            out["username"] = self.username
        if self.uid:
            out["uid"] = self.uid
        if self.groups:
            out["groups"] = list(self.groups)
        if self.extra:
            out["extra"] = {k: list(v) for k, v in self.extra.items()}
        return out

    def with_authenticated_group(self) -> UserInfo:
        """apiserver's AuthenticatedGroupAdder."""
        if self.username == ANONYMOUS or ALL_AUTHENTICATED in self.groups:
            return self
        if ALL_UNAUTHENTICATED in self.groups:
            return self
        return UserInfo(self.username, self.uid, (*self.groups, ALL_AUTHENTICATED), self.extra)


_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go's `time.ParseDuration`, in seconds."""
    text = text.strip()
    sign = 1.0
    if text[:1] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_RE.match(text, pos)
        if not m:
            raise ValueError(f"time: invalid duration {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(f"time: invalid duration {text!r}")
    return sign * total


class TokenFile:
    """`--token-auth-file`: CSV rows `token,user,uid[,"group1,group2"]`."""

    def __init__(self, path: Path) -> None:
        self.tokens: dict[str, UserInfo] = {}
        with path.open(newline="") as fh:
            for lineno, record in enumerate(csv.reader(fh, skipinitialspace=True), 1):
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue
                if len(record) < 3:
                    raise ValueError(
                        f"token file '{path}' must have at least 3 columns (token, user name, "
                        f"user uid), found {len(record)} on line {lineno}"
                    )
                token = record[0]
                if not token:
                    log.warning(
                        "empty token has been found in token file %s, line %d", path, lineno
                    )
                    continue
                groups: tuple[str, ...] = ()
                if len(record) >= 4 and record[3]:
                    groups = tuple(g.strip() for g in record[3].split(","))
                if token in self.tokens:
                    log.warning("duplicate token in token file %s, line %d", path, lineno)
                self.tokens[token] = UserInfo(record[1], record[2], groups)

    def lookup(self, token: str) -> UserInfo | None:
        return self.tokens.get(token)


class WebhookError(Exception):
    pass


@dataclass
class _CacheRecord:
    user: UserInfo | None
    expires: float


def _load_bytes(entry: dict[str, Any], data_key: str, file_key: str, base: Path) -> bytes | None:
    if entry.get(data_key):
        return base64.b64decode(entry[data_key])
    if entry.get(file_key):
        path = Path(entry[file_key])
        if not path.is_absolute():
            path = base / path
        return path.read_bytes()
    return None


class TokenWebhook:
    """`--authentication-token-webhook-config-file`: POSTs `TokenReview`s, caches the answers.

    Like kube-apiserver (`tokencache.New(webhook, false, ttl, ttl)`), positive and negative
    answers are cached for the TTL, errors are not. Requests that fail with 429/500/504 or a
    reset connection are retried with apiserver's default webhook backoff (0.5 s, x1.5, 5 steps).
    """

    RETRY_STEPS = 5
    RETRY_FIRST_DELAY = 0.5
    RETRY_FACTOR = 1.5

    def __init__(
        self,
        config_file: Path,
        version: str = "v1beta1",
        cache_ttl: float = 120.0,
        audiences: tuple[str, ...] = (),
    ) -> None:
        if version not in ("v1", "v1beta1"):
            raise ValueError(f"unsupported authentication webhook version {version!r}")
        self.version = version
        self.cache_ttl = cache_ttl
        self.audiences = audiences
        self._cache: dict[str, _CacheRecord] = {}
        self._inflight: dict[str, asyncio.Future[UserInfo | None]] = {}
        self._session: aiohttp.ClientSession | None = None
        cfg = yaml.safe_load(config_file.read_text())
        base = config_file.parent
        clusters = cfg.get("clusters") or []
        if not clusters:
            raise ValueError(f"{config_file}: no clusters")
        cluster = clusters[0].get("cluster") or {}
        self.url: str = cluster["server"]
        self._ssl: ssl.SSLContext | bool = True
        if self.url.startswith("https"):
            ca = _load_bytes(cluster, "certificate-authority-data", "certificate-authority", base)
            users = cfg.get("users") or []
            user = (users[0].get("user") or {}) if users else {}
            cert = _load_bytes(user, "client-certificate-data", "client-certificate", base)
            key = _load_bytes(user, "client-key-data", "client-key", base)
            with tempfile.TemporaryDirectory() as tmp:
                cert_file = key_file = None
                if cert and key:
                    cert_file, key_file = str(Path(tmp) / "c"), str(Path(tmp) / "k")
                    Path(cert_file).write_bytes(cert)
                    Path(key_file).write_bytes(key)
                self._ssl = client_context(
                    ca_data=ca.decode() if ca else None,
                    cert_file=cert_file,
                    key_file=key_file,
                    verify=not cluster.get("insecure-skip-tls-verify"),
                )
        users = cfg.get("users") or []
        user = (users[0].get("user") or {}) if users else {}
        self._bearer: str | None = user.get("token")

    def _key(self, token: str) -> str:
        h = hashlib.sha256()
        for aud in self.audiences:
            h.update(aud.encode() + b"\x00")
        h.update(b"\x01" + token.encode())
        return h.hexdigest()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def authenticate(self, token: str) -> UserInfo | None:
        """None when the webhook says not authenticated; WebhookError on failure."""
        key = self._key(token)
        now = time.monotonic()
        record = self._cache.get(key)
        if record is not None and record.expires > now:
            return record.user
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[UserInfo | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            user = await self._review_with_retries(token)
        except WebhookError as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved
            raise
        finally:
            self._inflight.pop(key, None)
        if self.cache_ttl > 0:
            self._cache[key] = _CacheRecord(user, time.monotonic() + self.cache_ttl)
        fut.set_result(user)
        return user

    async def _review_with_retries(self, token: str) -> UserInfo | None:
        delay = self.RETRY_FIRST_DELAY
        for step in range(self.RETRY_STEPS):
            try:
                return await self._review(token)
            except _Retriable as exc:
                if step == self.RETRY_STEPS - 1:
                    raise WebhookError(str(exc)) from exc
                await asyncio.sleep(delay)
                delay *= self.RETRY_FACTOR
        raise WebhookError("unreachable")

    def review_body(self, token: str) -> dict[str, Any]:
        """The TokenReview kube-apiserver sends (Go's JSON encoding of an empty object)."""
        spec: dict[str, Any] = {"token": token}
        if self.audiences:
            spec["audiences"] = list(self.audiences)
        return {
            "kind": "TokenReview",
            "apiVersion": f"authentication.k8s.io/{self.version}",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": {"user": {}},
        }

    async def _review(self, token: str) -> UserInfo | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, */*",
            "User-Agent": "kube-apiserver/v1.32.0 (linux/amd64) kubernetes/standin",
        }
        if self._bearer:
            headers["Authorization"] = f"Bearer {self._bearer}"
        try:
            async with self._session.post(
                self.url,
                data=json.dumps(self.review_body(token)).encode(),
                headers=headers,
                ssl=self._ssl,
            ) as resp:
                body = await resp.read()
                if resp.status in (429, 500, 504):
                    raise _Retriable(f"webhook answered {resp.status}")
                if resp.status < 200 or resp.status > 299:
                    raise WebhookError(f"webhook answered {resp.status}: {body[:200]!r}")
        except (ConnectionResetError, aiohttp.ServerDisconnectedError) as exc:
            raise _Retriable(str(exc)) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise WebhookError(str(exc)) from exc
        try:
            review = json.loads(body)
        except ValueError as exc:
            raise WebhookError(f"webhook answer is not JSON: {exc}") from exc
        status = review.get("status") or {}
        if (
            self.audiences
            and status.get("audiences")
            and not set(self.audiences) & set(status["audiences"])
        ):
            return None
        if not status.get("authenticated"):
            if status.get("error"):
                raise WebhookError(str(status["error"]))
            return None
        user = status.get("user") or {}
        extra = {k: tuple(v or ()) for k, v in (user.get("extra") or {}).items()}
        return UserInfo(
            user.get("username", ""), user.get("uid", ""), tuple(user.get("groups") or ()), extra
        )


class _Retriable(Exception):
    pass


def bearer_token(authorization: str | None) -> str | None:
    """apiserver's bearertoken authenticator: `Bearer <token>`, scheme case-insensitive."""
    if not authorization:
        return None
    parts = authorization.strip().split(" ", 2)
    if len(parts) < 2 or parts[0].lower() != "bearer" or not parts[1]:
        return None
    return parts[1]


def user_from_peer_cert(peercert: dict[str, Any] | None) -> UserInfo | None:
    """x509 authenticator: CN is the user name, every O a group."""
    if not peercert:
        return None
    cn = ""
    groups: list[str] = []
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
            elif key == "organizationName":
                groups.append(value)
    if not cn:
        return None
    return UserInfo(cn, "", tuple(groups))


class Authenticator:
    def __init__(
        self,
        token_file: TokenFile | None = None,
        webhook: TokenWebhook | None = None,
    ) -> None:
        self.token_file = token_file
        self.webhook = webhook

    async def authenticate(
        self, authorization: str | None, peercert: dict[str, Any] | None
    ) -> tuple[UserInfo | None, bool]:
        """Returns (user, credentials_presented).

        user None with credentials_presented True means 401 (bad credentials).
        """
        cert_user = user_from_peer_cert(peercert)
        if cert_user is not None:
            return cert_user.with_authenticated_group(), True
        token = bearer_token(authorization)
        if token is None:
            return None, bool(authorization)
        if self.token_file is not None:
            found = self.token_file.lookup(token)
            if found is not None:
                return found.with_authenticated_group(), True
        if self.webhook is not None:
            try:
                user = await self.webhook.authenticate(token)
            except WebhookError as exc:
                log.warning("Unable to authenticate the request: %s", exc)
                return None, True
            if user is not None:
                return user.with_authenticated_group(), True
        return None, True

    async def close(self) -> None:
        if self.webhook is not None:
            await self.webhook.close()

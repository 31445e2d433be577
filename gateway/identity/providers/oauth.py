"""Pieces shared by the OAuth-based providers (OIDC and GitHub).

* :class:`DeviceFlow`: what a device authorization grant (RFC 8628) gives the user.
* PKCE (RFC 7636) and random ``state``/``nonce`` values for the browser login.
* :class:`HttpClient`: a small aiohttp client that maps transport failures to
  :class:`ProviderUnavailable`, bounds response sizes and never follows redirects
  (so a bearer token is never replayed to another host).
* :class:`DevicePolls`: per-``device_code`` polling interval (``slow_down`` adds 5 s,
  RFC 8628 §3.5), so callers may poll as often as they like without the provider
  polling the authorization server faster than it allows.
* :func:`read_secret`: a client secret from the settings or from a ``*_file``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from config.errors import ConfigError
from config.tls import client_context
from gateway.identity.providers.base import ProviderUnavailable
from gateway.telemetry import metrics

MAX_RESPONSE_BYTES = 1024 * 1024
"""Largest response body read from an identity provider (discovery, JWKS, API pages)."""

DEVICE_DEFAULT_INTERVAL = 5
"""RFC 8628 §3.2: the polling interval when the server does not send one."""
SLOW_DOWN_STEP = 5
"""RFC 8628 §3.5: ``slow_down`` increases the interval by 5 seconds."""
DEVICE_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass(frozen=True, slots=True)
class DeviceFlow:
    """A started device login: show ``user_code`` and ``verification_uri`` to the user,
    keep ``device_code`` (it is a credential for the token endpoint; never log it)."""

    user_code: str
    verification_uri: str
    device_code: str
    interval: int
    """Seconds between polls, as the server asked."""
    expires_in: int
    """Seconds until the codes expire."""
    verification_uri_complete: str = ""
    """The verification URI with the user code filled in, when the server offers one."""

    @classmethod
    def parse(cls, data: dict[str, Any], who: str) -> DeviceFlow:
        """The device authorization answer (RFC 8628 section 3.2) of ``who``."""
        try:
            return cls(
                user_code=_text(data["user_code"]),
                verification_uri=_text(data["verification_uri"]),
                device_code=_text(data["device_code"]),
                interval=int(data.get("interval", DEVICE_DEFAULT_INTERVAL)),
                expires_in=int(data["expires_in"]),
                verification_uri_complete=_text(data.get("verification_uri_complete") or ""),
            )
        except (KeyError, TypeError, ValueError):
            raise ProviderUnavailable(f"{who} sent an incomplete device code answer") from None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def random_token(nbytes: int = 32) -> str:
    """A URL-safe random string for ``state`` and ``nonce``."""
    return secrets.token_urlsafe(nbytes)


def new_code_verifier() -> str:
    """A PKCE code verifier: 43 characters from the unreserved set (RFC 7636 §4.1)."""
    return secrets.token_urlsafe(32)


def code_challenge_s256(verifier: str) -> str:
    """``BASE64URL(SHA256(verifier))`` without padding (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def read_secret(value: str, file: str, path: str) -> str:
    """The secret from ``file`` when set (surrounding whitespace stripped), else ``value``.

    ``path`` names the setting in errors (``auth.oidc.client_secret_file``).
    """
    if not file:
        return value
    try:
        return Path(file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror}") from exc


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self, service: str) -> dict[str, Any]:
        """The body as a JSON object; anything else means the service is broken."""
        try:
            data = json.loads(self.body)
        except ValueError:
            raise ProviderUnavailable(f"{service} sent a response that is not JSON") from None
        if not isinstance(data, dict):
            raise ProviderUnavailable(f"{service} sent a JSON response that is not an object")
        return data

    def json_list(self, service: str) -> list[Any]:
        try:
            data = json.loads(self.body)
        except ValueError:
            raise ProviderUnavailable(f"{service} sent a response that is not JSON") from None
        if not isinstance(data, list):
            raise ProviderUnavailable(f"{service} sent a JSON response that is not a list")
        return data


class HttpClient:
    """One aiohttp session per provider, created on first use (it needs a running loop).

    ``service`` names the remote side in error messages ("the OIDC issuer", "GitHub");
    ``provider`` labels its latency metric.
    """

    def __init__(
        self,
        service: str,
        *,
        provider: str = "",
        ca_file: str = "",
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 10.0,
        max_body: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.service = service
        self._timer = metrics.PROVIDER_SECONDS.labels(provider or service, "http")
        self._ca_file = ca_file
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout_s or None, sock_connect=connect_timeout_s or None
        )
        self._max_body = max_body
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self._ssl is None:
                self._ssl = client_context(ca_file=self._ca_file or None)
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=32)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={"User-Agent": "herdgate"},
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """Send one request; raises ``ProviderUnavailable`` on transport errors."""
        session = self._ensure_session()
        started = time.perf_counter()
        try:
            async with session.request(
                method,
                url,
                data=data,
                headers=headers,
                params=params,
                allow_redirects=False,
            ) as resp:
                body = await self._read(resp)
                return HttpResponse(resp.status, resp.headers, body)
        except TimeoutError:
            raise ProviderUnavailable(f"{self.service} did not answer in time") from None
        except aiohttp.ClientError as exc:
            reason = type(exc).__name__
            raise ProviderUnavailable(f"{self.service} is unreachable ({reason})") from None
        finally:
            self._timer.observe(time.perf_counter() - started)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        chunks: list[bytes] = []
        total = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            total += len(chunk)
            if total > self._max_body:
                raise ProviderUnavailable(f"{self.service} sent an oversized response")
            chunks.append(chunk)
        return b"".join(chunks)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass(slots=True)
class _Poll:
    interval: float
    next_at: float
    expires_at: float


class DevicePolls:
    """When each pending device code may next be sent to the token endpoint.

    :meth:`claim` reserves the next poll before the request goes out, so concurrent
    callers for one device code send at most one request per interval. Bounded:
    expired entries are dropped, and the oldest go first past ``limit``. Unknown
    device codes (another gateway replica started the flow, or a restart) are polled
    at once and then tracked with the default interval.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, limit: int = 10000) -> None:
        self._clock = clock
        self._limit = limit
        self._polls: OrderedDict[str, _Poll] = OrderedDict()

    def start(self, device_code: str, interval: float, expires_in: float) -> None:
        now = self._clock()
        self._prune(now)
        self._polls[device_code] = _Poll(interval, now + interval, now + expires_in)
        while len(self._polls) > self._limit:
            self._polls.popitem(last=False)

    def claim(self, device_code: str) -> bool:
        """True (and the next poll is pushed one interval out) when a poll may go out now."""
        now = self._clock()
        poll = self._polls.get(device_code)
        if poll is None:
            self._polls[device_code] = _Poll(
                DEVICE_DEFAULT_INTERVAL, now + DEVICE_DEFAULT_INTERVAL, now + 3600
            )
            return True
        if now < poll.next_at:
            return False
        poll.next_at = now + poll.interval
        return True

    def slow_down(self, device_code: str, interval: float = 0) -> None:
        """The server said ``slow_down``: add 5 s (or take the ``interval`` it sent, if larger)."""
        poll = self._polls.get(device_code)
        if poll is None:
            return
        poll.interval = max(poll.interval + SLOW_DOWN_STEP, interval)
        poll.next_at = self._clock() + poll.interval

    def interval(self, device_code: str) -> float:
        poll = self._polls.get(device_code)
        return poll.interval if poll else DEVICE_DEFAULT_INTERVAL

    def done(self, device_code: str) -> None:
        self._polls.pop(device_code, None)

    def __len__(self) -> int:
        return len(self._polls)

    def _prune(self, now: float) -> None:
        expired = [code for code, poll in self._polls.items() if poll.expires_at <= now]
        for code in expired:
            del self._polls[code]

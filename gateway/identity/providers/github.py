"""GitHub (or GitHub Enterprise Server) as an OAuth app: browser and device login.

Login: :meth:`GitHubProvider.authorization_url` sends the browser to
``<web_url>/login/oauth/authorize``; :meth:`GitHubProvider.exchange_code` redeems the
code at ``<web_url>/login/oauth/access_token`` and reads ``/user``, ``/user/orgs`` and
``/user/teams`` from ``api_url`` (pages of 100, following ``Link: rel="next"`` only
while it stays under ``api_url``, at most ``max_pages``). The device flow
(:meth:`start_device_flow`, :meth:`poll_device_flow`) uses ``/login/device/code`` and
polls the same token endpoint with the device code, honouring ``interval`` and
``slow_down``.

Principals use GitHub's numeric ids, which survive renames: ``github_user://<id>``,
``github_org://<id>``, ``github_team://<id>``; ``login_name`` is the GitHub login. A
team implies membership of its organization, so that organization is added even if
``/user/orgs`` did not list it. With ``allowed_orgs`` set, a user outside them is
refused (``InvalidCredentials``) and only the allowed organizations and their teams
become groups.

Access tokens are not stored, anywhere. :meth:`exchange_code` and
:meth:`poll_device_flow` use the token for the three reads above and drop it; they
do not return it. Why: an OAuth-app token does not expire and carries the user's
``read:org`` grant (plus whatever the user granted the app before), so keeping it —
even encrypted, with the key on the same host as the database — would turn the
gateway's store into a collection of long-lived GitHub credentials, for a small gain:
group changes are picked up at the next login, and herdgate's own session tokens are
short (``tokens.session_ttl``, 16 h by default), so that is at most a working day
late. Removing someone from an organization should be paired with revoking their
herdgate tokens when it must take effect at once. :meth:`refresh_with_token` reads
the identity for a token the caller holds right now (e.g. a GitHub token presented
by a CLI); it is not a background refresh.

Errors: 401 from GitHub or a refused code is ``InvalidCredentials``; 5xx, timeouts,
unreachable hosts and rate limits (403/429 with ``x-ratelimit-remaining: 0`` or
``retry-after``, or a rate-limit message) are ``ProviderUnavailable``, the latter
saying when to retry. Client credentials GitHub rejects are ``ProviderUnavailable``
(a configuration problem, not the user's).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote, urlencode, urlsplit

from config.errors import ConfigError
from config.schema import GitHubSettings
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
)
from gateway.identity.providers.oauth import read_secret as _read_secret

logger = logging.getLogger(__name__)

PROVIDER = "github"
USER_PREFIX = "github_user://"
ORG_PREFIX = "github_org://"
TEAM_PREFIX = "github_team://"
API_VERSION = "2022-11-28"
PER_PAGE = 100
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


@dataclass(frozen=True, slots=True)
class _Org:
    id: int
    login: str


class GitHubProvider:
    """Logs users in with a GitHub OAuth app and reads their organizations and teams.

    ``clock`` (seconds) paces device-flow polling; tests replace it.
    """

    name = PROVIDER

    def __init__(
        self, settings: GitHubSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._check_settings(settings)
        self._client_secret = _read_secret(
            settings.client_secret, settings.client_secret_file, "auth.github.client_secret_file"
        )
        self._web = settings.web_url.rstrip("/")
        self._api = settings.api_url.rstrip("/")
        self._allowed = {o.strip().lower() for o in settings.allowed_orgs if o.strip()}
        self._http = HttpClient(
            "GitHub",
            provider="github",
            ca_file=settings.ca_file,
            connect_timeout_s=settings.connect_timeout_s,
            request_timeout_s=settings.request_timeout_s,
        )
        self._device = DevicePolls(clock)

    @staticmethod
    def _check_settings(settings: GitHubSettings) -> None:
        if not settings.client_id:
            raise ConfigError("auth.github.client_id", "is required")
        for name in ("web_url", "api_url"):
            url = urlsplit(getattr(settings, name))
            if url.scheme != "https" or not url.netloc:
                raise ConfigError(f"auth.github.{name}", "must be an https:// URL")
            if url.query or url.fragment:
                raise ConfigError(f"auth.github.{name}", "must not have a query or fragment")
        if settings.max_pages < 1:
            raise ConfigError("auth.github.max_pages", "must be at least 1")

    async def close(self) -> None:
        await self._http.close()

    # ------------------------------------------------------------------ browser login

    def authorization_url(self, state: str, redirect_uri: str = "") -> str:
        """Where to send the browser; GitHub redirects back with ``code`` and ``state``."""
        params = {
            "client_id": self.settings.client_id,
            "scope": " ".join(self.settings.scopes),
            "state": state,
            "allow_signup": "false",
        }
        redirect = redirect_uri or self.settings.redirect_uri
        if redirect:
            params["redirect_uri"] = redirect
        return f"{self._web}/login/oauth/authorize?{urlencode(params, quote_via=quote)}"

    async def exchange_code(self, code: str, redirect_uri: str = "") -> ExternalIdentity:
        """Redeem the code from the callback and read the user's identity and groups."""
        if not self._client_secret:
            raise ProviderUnavailable("auth.github.client_secret is not configured")
        form = {
            "client_id": self.settings.client_id,
            "client_secret": self._client_secret,
            "code": code,
        }
        redirect = redirect_uri or self.settings.redirect_uri
        if redirect:
            form["redirect_uri"] = redirect
        data = await self._token_request(form)
        if "error" in data:
            self._raise_oauth_error(data)
        return await self.refresh_with_token(self._access_token(data))

    # ------------------------------------------------------------------ device login

    async def start_device_flow(self) -> DeviceFlow:
        """Begin a device login (the OAuth app must have device flow enabled)."""
        resp = await self._http.request(
            "POST",
            f"{self._web}/login/device/code",
            data={"client_id": self.settings.client_id, "scope": " ".join(self.settings.scopes)},
            headers={"Accept": "application/json"},
        )
        self._check_web_status(resp)
        data = resp.json("GitHub")
        if "error" in data:
            self._raise_oauth_error(data)
        flow = DeviceFlow.parse(data, "GitHub")
        self._device.start(flow.device_code, flow.interval, flow.expires_in)
        return flow

    async def poll_device_flow(self, device_code: str) -> ExternalIdentity | None:
        """The identity once the user approved; None while pending (or polled too early)."""
        if not self._device.claim(device_code):
            return None
        data = await self._token_request(
            {
                "client_id": self.settings.client_id,
                "device_code": device_code,
                "grant_type": DEVICE_GRANT_TYPE,
            }
        )
        error = data.get("error")
        if error == "authorization_pending":
            return None
        if error == "slow_down":
            interval = data.get("interval")
            self._device.slow_down(device_code, interval if isinstance(interval, int) else 0)
            return None
        if error is not None:
            self._device.done(device_code)
            self._raise_oauth_error(data)
        self._device.done(device_code)
        return await self.refresh_with_token(self._access_token(data))

    def device_poll_interval(self, device_code: str) -> float:
        """Seconds the client should wait between polls (grows with ``slow_down``)."""
        return self._device.interval(device_code)

    # ------------------------------------------------------------------ identity

    async def refresh_with_token(self, access_token: str) -> ExternalIdentity:
        """The identity and groups of the user an access token belongs to."""
        user = await self._get_object("/user", access_token)
        user_id = user.get("id")
        login = user.get("login")
        if not isinstance(user_id, int) or not isinstance(login, str):
            raise ProviderUnavailable("GitHub's /user answer lacks id or login")
        orgs: dict[int, _Org] = {}
        for item in await self._get_pages("/user/orgs", access_token):
            org = _org(item)
            if org is not None:
                orgs[org.id] = org
        teams: list[tuple[int, _Org | None]] = []
        for item in await self._get_pages("/user/teams", access_token):
            if not isinstance(item, dict) or not isinstance(item.get("id"), int):
                continue
            team_org = _org(item.get("organization"))
            if team_org is not None:
                orgs.setdefault(team_org.id, team_org)
            teams.append((item["id"], team_org))
        if self._allowed:
            allowed = {oid for oid, org in orgs.items() if self._is_allowed(org)}
            if not allowed:
                raise InvalidCredentials(
                    f"GitHub user {login} is not a member of an allowed organization"
                )
            orgs = {oid: org for oid, org in orgs.items() if oid in allowed}
            teams = [(tid, org) for tid, org in teams if org is not None and org.id in allowed]
        groups = [f"{ORG_PREFIX}{oid}" for oid in orgs]
        groups += [f"{TEAM_PREFIX}{tid}" for tid, _ in teams]
        name = user.get("name")
        return ExternalIdentity(
            provider=PROVIDER,
            principal_id=f"{USER_PREFIX}{user_id}",
            login_name=login,
            display_name=name if isinstance(name, str) and name else login,
            groups=tuple(dict.fromkeys(groups)),
        )

    def _is_allowed(self, org: _Org) -> bool:
        return org.login.lower() in self._allowed or str(org.id) in self._allowed

    # ------------------------------------------------------------------ HTTP

    async def _token_request(self, form: dict[str, str]) -> dict[str, Any]:
        resp = await self._http.request(
            "POST",
            f"{self._web}/login/oauth/access_token",
            data=form,
            headers={"Accept": "application/json"},
        )
        self._check_web_status(resp)
        return resp.json("GitHub")

    @staticmethod
    def _access_token(data: dict[str, Any]) -> str:
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            raise ProviderUnavailable("GitHub's token answer lacks an access token")
        return token

    def _check_web_status(self, resp: HttpResponse) -> None:
        """Errors of the ``/login/...`` endpoints (they answer 200 with an ``error`` field)."""
        if resp.status == 200:
            return
        if resp.status in (403, 429):
            self._raise_rate_limited(resp)
        if resp.status == 404:
            raise ProviderUnavailable("GitHub answered 404: check auth.github.web_url")
        raise ProviderUnavailable(f"GitHub answered HTTP {resp.status}")

    def _raise_oauth_error(self, data: dict[str, Any]) -> NoReturn:
        error = data.get("error")
        if error in ("bad_verification_code", "expired_token", "incorrect_device_code"):
            raise InvalidCredentials("the GitHub code is invalid or has expired")
        if error == "access_denied":
            raise InvalidCredentials("the GitHub login was denied")
        if error == "incorrect_client_credentials":
            raise ProviderUnavailable("GitHub rejected herdgate's client id or secret")
        if error == "redirect_uri_mismatch":
            raise ProviderUnavailable("GitHub refused the redirect URI: check auth.github")
        if error == "device_flow_disabled":
            raise ProviderUnavailable("device login is not enabled for the GitHub OAuth app")
        safe = error if isinstance(error, str) and re.fullmatch(r"[a-z_]{1,64}", error) else "?"
        raise ProviderUnavailable(f"GitHub refused the login ({safe})")

    def _api_headers(self, access_token: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {access_token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
        }

    async def _get(self, url: str, access_token: str) -> HttpResponse:
        resp = await self._http.request("GET", url, headers=self._api_headers(access_token))
        if resp.status == 200:
            return resp
        if resp.status == 401:
            raise InvalidCredentials("GitHub did not accept the access token")
        if resp.status in (403, 429):
            self._raise_rate_limited(resp)
            raise InvalidCredentials("GitHub refused access for this user")
        if resp.status == 404:
            raise ProviderUnavailable("GitHub answered 404: check auth.github.api_url")
        raise ProviderUnavailable(f"GitHub answered HTTP {resp.status}")

    async def _get_object(self, path: str, access_token: str) -> dict[str, Any]:
        return (await self._get(self._api + path, access_token)).json("GitHub")

    async def _get_pages(self, path: str, access_token: str) -> list[Any]:
        url: str | None = f"{self._api}{path}?per_page={PER_PAGE}"
        items: list[Any] = []
        pages = 0
        while url is not None:
            if pages == self.settings.max_pages:
                logger.warning(
                    "GitHub %s: stopped after %d pages (auth.github.max_pages)", path, pages
                )
                break
            resp = await self._get(url, access_token)
            pages += 1
            items.extend(resp.json_list("GitHub"))
            url = self._next_page(resp)
        return items

    def _next_page(self, resp: HttpResponse) -> str | None:
        for header in resp.headers.getall("Link", []):
            match = _LINK_NEXT.search(header)
            if match:
                url = match.group(1)
                if not url.startswith(self._api + "/"):
                    # Never send the token anywhere but the configured API.
                    raise ProviderUnavailable("GitHub sent a next page outside auth.github.api_url")
                return url
        return None

    @staticmethod
    def _raise_rate_limited(resp: HttpResponse) -> None:
        """Raise ``ProviderUnavailable`` when a 403/429 is a rate limit; return otherwise."""
        remaining = resp.headers.get("x-ratelimit-remaining")
        retry_after = resp.headers.get("retry-after")
        message = ""
        try:
            body = resp.json("GitHub")
            message = str(body.get("message", ""))
        except ProviderUnavailable:
            pass
        limited = (
            remaining == "0"
            or retry_after is not None
            or resp.status == 429
            or "rate limit" in message.lower()
        )
        if not limited:
            return
        when = ""
        if retry_after and retry_after.isdigit():
            when = f"; retry in {int(retry_after)} s"
        elif remaining == "0":
            reset = resp.headers.get("x-ratelimit-reset", "")
            if reset.isdigit():
                at = dt.datetime.fromtimestamp(int(reset), dt.UTC)
                when = f"; it resets at {at:%H:%M:%S} UTC"
        kind = "secondary " if "secondary" in message.lower() else ""
        raise ProviderUnavailable(f"GitHub API {kind}rate limit exceeded{when}")


def _org(item: Any) -> _Org | None:
    if not isinstance(item, dict):
        return None
    oid, login = item.get("id"), item.get("login")
    if not isinstance(oid, int) or not isinstance(login, str):
        return None
    return _Org(oid, login)

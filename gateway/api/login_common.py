"""What every login ends with, whichever provider checked the caller: the failed-login
limits, the login metric and the session token issued."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from config.schema import AuthSettings
from gateway.api.common import directory, string_field, ttl_seconds
from gateway.api.kubeconfigs import MAX_LISTED
from gateway.api.tokens import token_view
from gateway.errors import GatewayError, NotFound
from gateway.identity.directory import TooManyTokens
from gateway.identity.ratelimit import Limit, LoginLimiter
from gateway.keys import SETTINGS
from gateway.store.base import Store
from gateway.store.records import User
from gateway.telemetry import metrics


def make_limiter(store: Store, settings: AuthSettings) -> LoginLimiter:
    """The failed-login limits, counted in ``store`` (shared by every worker and replica)."""
    return LoginLimiter(
        store,
        Limit(settings.login_failures_per_user, settings.login_failure_window_s),
        Limit(settings.login_failures_per_address, settings.login_failure_window_s),
    )


class TooManyAttempts(GatewayError):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(429, "too many failed logins; try again later")
        self.headers["Retry-After"] = str(max(1, round(retry_after_s)))


def count_login(provider: str, result: str) -> None:
    """``herdgate_logins_total``: success, invalid, unavailable or limited."""
    metrics.LOGINS.labels(provider, result).inc()


async def session_token(request: web.Request, user: User, data: dict[str, Any]) -> dict[str, Any]:
    """Issue a login token for ``user``; the token view with its one-time plaintext."""
    d = directory(request)
    settings = request.app[SETTINGS].tokens
    ttl = ttl_seconds(request, data, settings.session_ttl_s)
    description = string_field(data, "description") or "login"
    scope = _scope(data)
    identity = d.identity_of(user)
    for cluster_id in scope:
        if cluster_id not in d.clusters or d.role_on(identity, cluster_id) is None:
            raise NotFound(f"cluster {cluster_id} not found")
    try:
        token, plaintext = await d.issue_token(
            user,
            ttl,
            kind="session",
            description=description,
            cluster_ids=scope,
            max_per_user=settings.max_per_user,
        )
    except TooManyTokens as exc:
        raise GatewayError(409, str(exc)) from None
    body = token_view(token, current_id="")
    body["token"] = plaintext
    return body


def _scope(data: dict[str, Any]) -> list[str]:
    """The clusters a login's token is scoped to: ``clusterId`` (one) and ``clusterIds``
    (``herdgate login`` with several ``--cluster``, an exec kubeconfig for several
    clusters); none: not scoped."""
    scope = [string_field(data, "clusterId")]
    listed = data.get("clusterIds")
    if listed is not None:
        if not isinstance(listed, list) or len(listed) > MAX_LISTED:
            message = f"clusterIds must be a list of at most {MAX_LISTED} cluster ids"
            raise GatewayError(422, message, reason="InvalidFormat")
        scope += [string_field({"clusterIds": item}, "clusterIds") for item in listed]
    return [cluster_id for cluster_id in dict.fromkeys(scope) if cluster_id]


async def issue_session_token(
    request: web.Request, user: User, data: dict[str, Any]
) -> web.Response:
    return web.json_response(await session_token(request, user, data), status=201)

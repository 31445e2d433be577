"""The management API's audit records: every login attempt and every change (made or
refused) to users, tokens, clusters, bindings and registration tokens, in the same
audit log as proxied requests (``gateway.telemetry.audit.management_record``).

A middleware writes one record per request that can change something (POST, PUT,
PATCH, DELETE outside ``/k8s/``, and the browser-login callback), once its answer is
known. Handlers leave what only they know on the request: the authenticated caller
(``gateway.api.common.authenticated``) and a login's provider and user name. Bodies
are never recorded; from an answer only its ``id`` (and a login's ``userId``) is read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from config.identity import Identity
from config.logging import request_id as request_id_var
from gateway.telemetry.audit import AUDIT, management_record, new_request_id

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ACTOR = web.RequestKey("herdgate.actor", Identity)
"""Request key: the caller's ``Identity``, set when a handler authenticated it."""
LOGIN: web.RequestKey[dict[str, str]] = web.RequestKey("herdgate.login")
"""Request key: a login's ``{"provider", "loginName"}``, set by the login handlers; a
login whose answer is not the JSON token (a browser login, the web page's form) adds
``result``, ``userId`` and ``tokenId`` (the session token's id, never its secret)."""
AUDITED_AS: web.RequestKey[tuple[str, str, str]] = web.RequestKey("herdgate.audited_as")
"""Request key: ``(resource, action, object id)`` for a route outside ``/v3`` (the web
page's forms, ``gateway.ui``), as the ``/v3`` request doing the same is recorded."""

_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_LOGIN_RESULTS = {201: "success", 202: "pending", 401: "invalid", 429: "limited"}
_MAX_ANSWER_READ = 1024 * 1024


def audited(request: web.Request) -> bool:
    path = request.path
    if path.startswith("/v1/auth/") and path.endswith("/callback"):
        return True  # a browser login
    return request.method in _CHANGES and not path.startswith(("/k8s/", "/v3/connect"))


def _resource_and_action(request: web.Request) -> tuple[str, str]:
    """``("users", "create")``, ``("clusterregistrationtokens", "rotate")``, ...

    Read from the matched route, never from the raw path (which is the client's)."""
    named = request.get(AUDITED_AS)
    if named is not None:
        return named[0], named[1]
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else ""
    if canonical.startswith(("/v3-public/", "/v1/auth/")):
        query_action = request.query.get("action", "")
        return "login", query_action if query_action in ("deviceCode", "deviceToken") else "login"
    parts = [p for p in canonical.split("/") if p]
    if len(parts) < 2 or parts[0] != "v3":
        return "unknown", request.method.lower()
    name = parts[1]
    query_action = request.query.get("action", "")
    if query_action:
        return name, query_action[:64]
    item = len(parts) > 2
    verb = {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete"}
    action = verb.get(request.method, request.method.lower())
    if action == "delete" and not item:
        action = "deleteAll"
    return name, action


def _answer_ids(response: web.StreamResponse | None) -> dict[str, Any]:
    """``id`` and ``userId`` of a JSON answer (a created object, a login's token)."""
    if not isinstance(response, web.Response) or response.status >= 300:
        return {}
    body = response.body
    if not isinstance(body, bytes) or len(body) > _MAX_ANSWER_READ:
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: data[k] for k in ("id", "userId") if isinstance(data.get(k), str)}


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not audited(request) or not request.app[AUDIT].enabled:
        return await handler(request)
    started = time.time()
    clock = time.perf_counter()
    status = 499  # the client went away before an answer
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception:
        status = 500
        raise
    finally:
        _write(request, started, time.perf_counter() - clock, status, response)


def _write(
    request: web.Request,
    started: float,
    duration_s: float,
    status: int,
    response: web.StreamResponse | None,
) -> None:
    resource, action = _resource_and_action(request)
    ids = _answer_ids(response)
    identity = request.get(ACTOR)
    named = request.get(AUDITED_AS)
    object_id = request.match_info.get("id", "") or ids.get("id", "") or (named[2] if named else "")
    extra: dict[str, Any] = {}
    if resource == "login":
        login = request.get(LOGIN) or {}
        extra["provider"] = (
            login.get("provider")
            or request.match_info.get("name")
            or request.match_info.get("provider", "")
        )
        if login.get("loginName"):
            extra["loginName"] = login["loginName"]
        extra["result"] = login.get("result") or _LOGIN_RESULTS.get(
            status, "error" if status >= 500 else "refused"
        )
        if "userId" in ids or "userId" in login:
            extra["userId"] = login.get("userId") or ids["userId"]
        # the session token's id (never its secret)
        object_id = login.get("tokenId") or ids.get("id", "")
    record = management_record(
        started=started,
        request_id=request_id_var.get() or new_request_id(),
        identity=identity,
        method=request.method,
        # A browser login's callback carries the provider's one-time code: path only.
        target=request.path if request.path.startswith("/v1/auth/") else request.path_qs,
        resource=resource,
        action=action,
        object_id=object_id,
        source=request.remote or "",
        user_agent=request.headers.get("User-Agent", ""),
        status=status,
        duration_s=duration_s,
        extra=extra,
    )
    request.app[AUDIT].write(record)

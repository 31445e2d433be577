"""Gateway errors and their JSON bodies.

Under ``/k8s/`` errors are Kubernetes ``Status`` objects, so kubectl prints them;
under ``/v3`` they follow Rancher's API error shape.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from aiohttp import web

# Kubernetes StatusReason for each HTTP code the gateway produces.
_K8S_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "RequestEntityTooLarge",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    502: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class GatewayError(Exception):
    def __init__(
        self, status: int, message: str, reason: str = "", details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason or _K8S_REASONS.get(status, HTTPStatus(status).phrase.replace(" ", ""))
        self.details = details
        self.headers: dict[str, str] = {}


class Unauthenticated(GatewayError):
    def __init__(self, message: str = "Unauthorized") -> None:
        super().__init__(401, message)


class Forbidden(GatewayError):
    def __init__(self, message: str) -> None:
        super().__init__(403, message)


class NotFound(GatewayError):
    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(404, message, details=details)


class BadRequest(GatewayError):
    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class UpstreamUnavailable(GatewayError):
    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(status, message)


class TooManyRequests(GatewayError):
    """429 with ``Retry-After`` (kubectl and client-go wait that long and retry)."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(429, message, details={"retryAfterSeconds": retry_after_s})
        self.headers["Retry-After"] = str(retry_after_s)


def status_body(status: int, message: str, reason: str, details: dict[str, Any] | None) -> bytes:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": status,
    }
    if details:
        body["details"] = details
    return json.dumps(body).encode()


def k8s_response(error: GatewayError) -> web.Response:
    headers = {"Cache-Control": "no-cache, private", **error.headers}
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="herdgate"'
    return web.Response(
        status=error.status,
        body=status_body(error.status, error.message, error.reason, error.details),
        content_type="application/json",
        headers=headers,
    )


def api_response(error: GatewayError) -> web.Response:
    body = {
        "type": "error",
        "status": error.status,
        "code": error.reason,
        "message": error.message,
    }
    return web.json_response(body, status=error.status, headers=error.headers)


class BadBody(ConnectionError):
    """A request body broke off on the lean path (malformed, too large or too slow):
    the connection answers ``status`` and closes (``gateway.front.connection``).

    A ``ConnectionError``: the proxy and the upstream pass it on as a client that went
    away (the tunnel stream is reset, nothing is answered from the API server). Here,
    not in the compiled ``gateway.front.connection``: mypyc cannot subclass ``ConnectionError``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

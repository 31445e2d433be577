"""The HTTP face of the webhook: ``POST /v1/authenticate``, ``GET /healthz``, ``GET /livez``,
``GET /metrics`` (Prometheus, see webhook.metrics).

``answer()`` is the whole request pipeline as a pure function (body bytes and records in,
status and JSON out) so it can be fuzzed; the aiohttp handlers only move bytes. Every
answer is JSON: a ``TokenReview`` for a well-formed review, a ``Status`` otherwise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import Counter

from ace.records import Accepted, Decision, TokenRecord, UserRecord, decide
from webhook import review
from webhook.metrics import METRICS_PATH, WebhookMetrics

logger = logging.getLogger(__name__)

AUTHENTICATE_PATH = "/v1/authenticate"
DEFAULT_MAX_BODY = 1024 * 1024
BODY_TIMEOUT_S = 10.0
"""kube-apiserver sends a review in one write; a body that trickles in is cut off."""

METRICS = web.AppKey("metrics", WebhookMetrics)

_REASONS = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "Timeout",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    503: "ServiceUnavailable",
}


class RecordSource(Protocol):
    """What the handlers read: the cache (webhook.cache.RecordCache) or a test's dicts."""

    @property
    def tokens(self) -> Mapping[str, TokenRecord]: ...

    @property
    def users(self) -> Mapping[str, UserRecord]: ...

    @property
    def synced(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Mapping[str, Any]
    decision: Decision | None = None
    """None when the request was not a review."""


def answer(
    body: bytes,
    tokens: Mapping[str, TokenRecord],
    users: Mapping[str, UserRecord],
    now: float,
    max_body: int = DEFAULT_MAX_BODY,
) -> Answer:
    """The reply to one POST of ``body``: a TokenReview (200) or a Status (4xx)."""
    try:
        request = review.parse_request(body, max_body)
    except review.BadReview as exc:
        return Answer(exc.code, exc.answer())
    decision = decide(request.token, tokens, users, now)
    if isinstance(decision, Accepted):
        return Answer(200, review.build_response(request.api_version, decision.identity), decision)
    return Answer(200, review.build_response(request.api_version, None, decision.reason), decision)


def _json(status: int, body: Mapping[str, Any]) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def _status(code: int, message: str) -> web.Response:
    return _json(code, review.status_object(code, _REASONS.get(code, "InternalError"), message))


def _too_large(max_body: int) -> web.Response:
    message = f"the request body is larger than {max_body} bytes"
    logger.warning("refused a request that is not a TokenReview: %s", message)
    response = _status(413, message)
    response.force_close()  # do not read the rest of it
    return response


def _log(result: Answer) -> None:
    decision = result.decision
    if decision is None:
        logger.warning("refused a request that is not a TokenReview: %s", result.body["message"])
    elif isinstance(decision, Accepted):
        logger.debug(
            "token %s accepted for %s", decision.identity.token_id, decision.identity.user_id
        )
    elif decision.token_id:
        # Only ids of existing records are logged; unknown input is never echoed.
        logger.info("token %s refused: %s", decision.token_id, decision.reason)
    else:
        logger.debug("token refused: %s", decision.reason)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Routing errors and bugs become ``Status`` JSON; the process never goes down."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if request.path == AUTHENTICATE_PATH:  # e.g. GET: an answer, but not a review
            request.app[METRICS].error.inc()
        response = _status(exc.status, exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:  # answer 500 and keep serving
        logger.exception("error handling %s %s", request.method, request.path)
        if request.path == AUTHENTICATE_PATH:
            request.app[METRICS].error.inc()
        return _status(500, "internal error")


def build_app(
    source: RecordSource,
    max_body: int = DEFAULT_MAX_BODY,
    clock: Callable[[], float] = time.time,
    metrics: WebhookMetrics | None = None,
) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=max_body)
    metrics = metrics or WebhookMetrics()
    app[METRICS] = metrics
    allowed, denied, error = metrics.allowed, metrics.denied, metrics.error
    review_seconds = metrics.review_seconds

    async def authenticate(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        response, result = await _review(request)
        result.inc()
        review_seconds.observe(time.perf_counter() - started)
        return response

    async def _review(request: web.Request) -> tuple[web.StreamResponse, Counter]:
        """The answer, and the decision counter it counts in."""
        length = request.content_length
        if length is not None and length > max_body:
            return _too_large(max_body), error
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                body = await request.read()
        except TimeoutError:
            response = _status(408, f"the request body did not arrive within {BODY_TIMEOUT_S:.0f}s")
            response.force_close()
            return response, error
        except web.HTTPRequestEntityTooLarge:
            return _too_large(max_body), error
        except ConnectionError:  # the client went away mid-body; nobody reads an answer
            logger.debug("client disconnected before sending the whole review")
            return _status(400, "incomplete request body"), error
        if not source.synced:
            return _status(503, "the webhook has not loaded its records yet"), error
        result = answer(body, source.tokens, source.users, clock(), max_body)
        _log(result)
        decision = result.decision
        counter = (
            error if decision is None else allowed if isinstance(decision, Accepted) else denied
        )
        return _json(result.status, result.body), counter

    async def healthz(request: web.Request) -> web.StreamResponse:
        if not source.synced:
            return _json(503, {"status": "syncing"})
        return _json(
            200,
            {"status": "ok", "tokens": len(source.tokens), "users": len(source.users)},
        )

    async def livez(request: web.Request) -> web.StreamResponse:
        return _json(200, {"status": "ok"})

    async def metrics_page(request: web.Request) -> web.StreamResponse:
        return metrics.response(len(source.tokens), len(source.users), source.synced)

    app.router.add_post(AUTHENTICATE_PATH, authenticate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    app.router.add_get(METRICS_PATH, metrics_page)
    return app

"""A client's request as the fronts make it, and what answers it.

Both fronts make the request model's one ``Request`` (``gateway.proxy.model``):
``client_request`` from a head read over HTTP/1.1 (``gateway.front.connection``) or an
HTTP/2 stream's fields (``gateway.front.h2``); what differs between the two is behind
their ``RequestSide``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.front.h1_protocol import Head
from gateway.proxy.model import Answer, Request, RequestSide

Answerer = Callable[[web.Application, Request], Awaitable[Answer]]
"""What answers a request (``gateway.front.connection.Front.answerer`` picks one): the
proxy, the agents' endpoint or the bridge to aiohttp."""


def client_request(head: Head, side: RequestSide) -> Request:
    """The request model's ``Request`` for a head read by ``gateway.front.h1_protocol``
    (or built from an HTTP/2 stream's fields)."""
    auth = head.authorization
    return Request(
        side,
        head.method,
        head.target.decode("latin-1"),
        head.version,
        head.headers,
        keep_alive=head.keep_alive,
        upgrade=head.upgrade,
        content_length=head.content_length,
        body_exists=head.has_body,
        expect_continue=head.expect_continue and head.has_body,
        authorization=None if auth is None else auth.decode("latin-1"),
        user_agent=head.user_agent.decode("latin-1"),
        impersonates=head.impersonates,
    )

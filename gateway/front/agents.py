"""The agents' endpoint: ``GET /v3/connect``, a WebSocket that becomes a tunnel.

The front reads the request like any other; ``answer`` checks the agent's registration
token and the cluster's agent cap (``gateway.clusters.tunnels.admit``), then the
WebSocket handshake (``tunnel.websocket``). A refusal is a v3 error. An accepted agent
gets a 101, after which the front hands its transport to ``AgentTunnel``: a
``tunnel.wsconn.WebSocketConnection`` takes the connection over and the tunnel session
runs on it (``gateway.clusters.tunnels.serve_agent``) until it closes. Like every
management request, the agent's gets a request id: in ``X-Request-Id`` and on every log
line written while it is served (its tunnel's life).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from config.logging import request_id as request_id_var
from gateway.clusters import tunnels
from gateway.errors import api_body
from gateway.keys import SETTINGS
from gateway.proxy.model import Answer, Request, phrase, switching, whole
from gateway.telemetry.audit import new_request_id
from tunnel import wsconn
from tunnel.redial import REFUSAL_HEADER
from tunnel.websocket import HandshakeError, server_accept

CONNECT_PATH = "/v3/connect"

_JSON = (b"Content-Type", b"application/json; charset=utf-8")


async def answer(app: web.Application, request: Request) -> Answer:
    """A 101 whose upgrade runs the agent's tunnel, or a v3 error. An accepted agent's
    101 waits for its turn (``tunnels.AcceptPacer``): a restarted gateway takes its
    agents back at a bounded rate however they bunch."""
    request_id = new_request_id()
    context = request_id_var.set(request_id)
    try:
        accepted = _accept(app, request, request_id)
        if isinstance(accepted, Answer):
            return accepted
        lines, tunnel, admission = accepted
        pacer = app[tunnels.ACCEPT_PACER]
        max_waiting = app[SETTINGS].registration.max_agents_per_cluster
        turn = pacer.turn(admission.cluster_id, asyncio.get_running_loop().time(), max_waiting)
        if isinstance(turn, tunnels.Refusal):
            return _refused(turn, request_id)
        if turn > 0:
            with pacer.waiting_for(admission.cluster_id):
                await asyncio.sleep(turn)
        return switching("Switching Protocols", lines, tunnel, request_id)
    finally:
        request_id_var.reset(context)


def _refused(refusal: tunnels.Refusal, request_id: str) -> Answer:
    headers = [_JSON]
    if refusal.why:
        headers.append((REFUSAL_HEADER.encode(), refusal.why.encode()))
    if refusal.retry_after_s:
        headers.append((b"Retry-After", b"%d" % refusal.retry_after_s))
    # The message is also the reason phrase: the agent reads the head only.
    body = api_body(refusal.status, refusal.code, refusal.message)
    return whole(refusal.status, refusal.message, headers, body, request_id=request_id)


def _accept(
    app: web.Application, request: Request, request_id: str
) -> Answer | tuple[list[tuple[bytes, bytes]], AgentTunnel, tunnels.Admission]:
    """The agent's refusal, or the 101's header lines, its tunnel and its admission."""
    admitted = tunnels.admit(
        app,
        request.authorization,
        request.headers.get(tunnels.AGENT_ID_HEADER, ""),
        request.remote,
    )
    if isinstance(admitted, tunnels.Refusal):
        return _refused(admitted, request_id)
    try:
        accepted = server_accept(request.headers)
    except HandshakeError as exc:
        headers = [_JSON]
        if exc.status == 426:
            headers.append((b"Sec-WebSocket-Version", b"13"))
        code = "UpgradeRequired" if exc.status == 426 else "BadRequest"
        body = api_body(exc.status, code, str(exc))
        return whole(exc.status, phrase(exc.status), headers, body, request_id=request_id)
    lines = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in accepted.items()]
    return lines, AgentTunnel(app, admitted, request_id), admitted


class AgentTunnel:
    """An accepted agent: its connection becomes a WebSocket, and the tunnel runs on it."""

    def __init__(self, app: web.Application, admission: tunnels.Admission, request_id: str) -> None:
        self._app = app
        self._admission = admission
        self._request_id = request_id

    def abandon(self) -> None:
        return None  # nothing is held before the connection is taken over

    async def take_over(self, transport: asyncio.Transport, previous: asyncio.BaseProtocol) -> bool:
        """True once the tunnel runs (on its own: no task waits for its end)."""
        context = request_id_var.set(self._request_id)
        try:
            conn = wsconn.take_over(transport, previous=previous)
            return await tunnels.serve_agent(self._app, self._admission, conn)
        finally:
            request_id_var.reset(context)

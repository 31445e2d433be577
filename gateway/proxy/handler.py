"""``/k8s/clusters/<id>/...``: authenticate, authorise, rewrite, forward, stream back.

``answer`` is the proxy's one entry: a front's ``Request`` in (``gateway.proxy.model``),
an ``Answer`` out: whole (most answers, and every error as a Kubernetes ``Status``),
streamed through the request's ``AnswerWriter``, or a 101 whose ``Upgrade``
(``gateway.proxy.upgrade``) joins the client's connection to the tunnel stream.
``forward`` is the part after authorisation, which the gateway's own API client
(``gateway.controllers.downstream``) uses too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from functools import lru_cache, partial

from aiohttp import web

from config.identity import Identity
from config.logging import request_id as request_id_var
from gateway.clusters.replicas import REPLICAS
from gateway.clusters.tunnels import STREAM_QUOTA, TUNNELS, AgentLink
from gateway.clusters.upstream import Response, UpstreamError
from gateway.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    NotFound,
    TooManyRequests,
    Unauthenticated,
    UpstreamUnavailable,
)
from gateway.identity.directory import DIRECTORY, AuthenticationFailed
from gateway.identity.providers.base import InvalidCredentials, ProviderUnavailable
from gateway.identity.providers.registry import PROVIDERS
from gateway.proxy import access, sessions, upgrade
from gateway.proxy.exchange import Exchange
from gateway.proxy.heads import (
    CheckedFields,
    UnsafeHead,
    field_block,
    request_head,
)
from gateway.proxy.impersonation import Header, forwarded_headers, identity_block
from gateway.proxy.impersonation_review import (
    IMPERSONATION_REVIEWS,
    ask_cluster,
    reviews_for,
)
from gateway.proxy.model import (
    SWITCHING,
    Answer,
    Request,
    parked,
    status_answer,
    streamed,
    whole,
)
from gateway.proxy.parked import ParkedAnswer
from gateway.proxy.paths import BadPath, split_cluster_path
from gateway.proxy.requestinfo import request_info
from gateway.proxy.sessions import SESSIONS
from gateway.store.records import Cluster
from gateway.telemetry import audit, metrics
from gateway.telemetry.audit import AUDIT
from gateway.telemetry.drain import DRAIN
from tunnel.errors import NoAgentSession, TooManyStreams, TunnelError

logger = logging.getLogger(__name__)

WAIT_FOR_TUNNEL_S = 5.0
"""How long a replica without a tunnel waits for the agent, if another replica has one."""
BUFFER_LIMIT = 256 * 1024
"""Bodies up to this size are read whole (one write); larger ones are streamed."""


async def _authenticate(app: web.Application, request: Request, cluster_id: str) -> Identity:
    header = request.authorization  # picked out while parsing
    directory = app[DIRECTORY]
    try:
        identity, token = directory.authenticate(header)
    except AuthenticationFailed:
        return await _authenticate_id_token(app, header)
    if token.cluster_id and not token.valid_on(cluster_id):
        _HOT.authentication("token", "failure")
        raise Unauthenticated()
    _HOT.authentication("token", "success")
    return identity


async def _authenticate_id_token(app: web.Application, header: str | None) -> Identity:
    """An OIDC ID token as the bearer credential (validations are cached per token)."""
    oidc = app[PROVIDERS].oidc
    scheme, _, credential = (header or "").partition(" ")
    if oidc is None or scheme.lower() != "bearer" or credential.count(".") != 2:
        _HOT.authentication("token", "failure")
        raise Unauthenticated()
    try:
        external = await oidc.validate_id_token(credential.strip())
        identity = await app[DIRECTORY].identity_for_external(external)
    except (InvalidCredentials, ProviderUnavailable, AuthenticationFailed):
        _HOT.authentication("oidc", "failure")
        raise Unauthenticated() from None
    _HOT.authentication("oidc", "success")
    return identity


_HOT = metrics.HOT


@lru_cache(maxsize=1024)
def _agent_block(api_host: bytes, authorization: bytes) -> CheckedFields:
    """The agent's ``Host`` and credential, checked once per agent."""
    fields = [(b"Host", api_host)]
    if authorization:
        fields.append((b"Authorization", authorization))
    return field_block(fields)


def _head(
    request: Request,
    target: str,
    link: AgentLink,
    identity: CheckedFields | None,
    keep_client_impersonation: bool,
    upgrade_request: bool,
    body_framing: Header | None,
    request_id: str,
) -> bytes:
    """The head sent to the API server, built (and checked) by ``gateway.proxy.heads``."""
    fields = forwarded_headers(
        request.raw_headers, keep_impersonation=keep_client_impersonation, upgrade=upgrade_request
    )
    if request_id:
        # The API server takes Audit-ID as its own audit id: its audit log and the
        # gateway's then name each request the same way.
        rid = request_id.encode("ascii")
        fields += [(b"X-Request-Id", rid), (b"Audit-ID", rid)]
    remote = request.remote
    if remote:
        # What kube-apiserver puts first in its audit log's sourceIPs.
        fields.append((b"X-Forwarded-For", remote.encode("ascii", "replace")))
    if body_framing is not None:
        fields.append(body_framing)
    agent = _agent_block(link.info.api_host, link.info.authorization)
    method = request.method.encode("utf-8", "replace")
    path = target.encode("utf-8", "replace")
    if identity is None:
        return request_head(method, path, fields, agent)
    return request_head(method, path, fields, agent, identity)


class _BodyOut:
    """A request body read from the client as it arrives, framed for the API server:
    as it came (``Content-Length``) or in HTTP/1.1 chunks (an async iterator class; the
    compiled build supports no async generators)."""

    __slots__ = ("_chunked", "_done", "_first", "_pieces")

    def __init__(
        self,
        request: Request,
        chunked: bool,
        pieces: AsyncIterator[bytes] | None = None,
        first: list[bytes] | None = None,
    ) -> None:
        self._pieces = pieces if pieces is not None else request.iter_any().__aiter__()
        self._first = first
        """Pieces read before the tunnel stream was taken (``_read_up_to``)."""
        self._chunked = chunked
        self._done = False

    def __aiter__(self) -> _BodyOut:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._first:
                data = b"".join(self._first)
                self._first = None
            else:
                data = await self._pieces.__anext__()
        except StopAsyncIteration:
            self._done = True
            if self._chunked:
                return b"0\r\n\r\n"
            raise
        if self._chunked:
            return b"%x\r\n%s\r\n" % (len(data), data)
        return data


async def _read_up_to(pieces: AsyncIterator[bytes], limit: int) -> tuple[list[bytes], bool]:
    """The first pieces of a body, until more than ``limit`` bytes or its end; and
    whether that was the end."""
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        try:
            piece = await pieces.__anext__()
        except StopAsyncIteration:
            return parts, True
        parts.append(piece)
        size += len(piece)
    return parts, False


async def answer(app: web.Application, request: Request) -> Answer:
    """Answer one cluster request: count it, audit it, turn failures into ``Status``.

    A 101's accounting (the request in flight, its metrics and audit record) ends when
    its session does (``gateway.proxy.upgrade``), not here."""
    exchange = Exchange(app[AUDIT])
    context = request_id_var.set(exchange.request_id)
    drain = app[DRAIN]
    drain.enter()
    try:
        try:
            response = await _serve(app, request, exchange)
        except GatewayError as exc:
            exchange.status = exc.status
            response = _error_answer(exc, exchange.request_id)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            logger.exception("unhandled error for %s %s", request.method, request.path)
            exchange.status = 500
            response = _error_answer(GatewayError(500, "internal error"), exchange.request_id)
    except BaseException:
        drain.leave()
        exchange.finish(request)
        request_id_var.reset(context)
        raise
    relay = response.parked
    if isinstance(relay, ParkedAnswer):
        # The relay's end ends the request (its accounting, its audit record).
        relay.account(drain, exchange, request)
        request_id_var.reset(context)
        return response
    joined = response.upgrade if response.kind == SWITCHING else None
    if isinstance(joined, upgrade.Upgraded):
        # The session's end ends the request (its record names the bytes it carried).
        # (No closure here: it would cost every request an environment object.)
        joined.when_done(drain.leave)
        joined.when_done(partial(exchange.finish, request))
    else:
        drain.leave()
        exchange.finish(request)
    request_id_var.reset(context)
    return response


def _error_answer(error: GatewayError, request_id: str) -> Answer:
    return status_answer(
        error.status,
        error.message,
        error.reason,
        error.details,
        error.headers,
        request_id=request_id,
    )


async def _serve(app: web.Application, request: Request, exchange: Exchange) -> Answer:
    started = time.perf_counter()
    try:
        path = split_cluster_path(request.raw_path)
    except BadPath as exc:
        raise BadRequest(str(exc)) from None
    directory = app[DIRECTORY]
    exchange.cluster_id = path.cluster_id
    exchange.cluster_known = path.cluster_id in directory.clusters
    exchange.target = path.target
    identity = await _authenticate(app, request, path.cluster_id)
    request.authorization = None  # not held for the life of a watch
    cluster = directory.clusters.get(path.cluster_id)
    if cluster is None:
        raise _cluster_not_found(path.cluster_id)
    role = directory.role_on(identity, cluster.id)
    upgrade_request = request.upgrade
    exchange.identity = identity
    exchange.role = role
    exchange.info = request_info(request.method, path.target, upgrade_request)
    if request.impersonates:  # kubectl --as: the record names both
        exchange.note_impersonation(request.raw_headers)
    if role is None:
        # Not theirs to see: answered as a cluster that does not exist (as /v3 does), so
        # that a caller learns nothing of it, not even that it exists. (Audited as it is.)
        raise _cluster_not_found(path.cluster_id)
    if not access.is_allowed(role, request.method, path.path):
        raise Forbidden(
            f'forbidden: User "{identity.user_id}" has the read-only role on cluster '
            f"{cluster.name}: {request.method} is not allowed"
        )
    if upgrade_request and not _upgrade_allowed(request, path.path):
        raise BadRequest(
            "upgrades are only for exec, attach, portforward and proxy, to websocket or SPDY/3.1"
        )
    client_impersonates = request.impersonates
    if client_impersonates:
        # kubectl --as: forwarded as the client sent it (the agent impersonates the
        # target) only when the cluster lets the caller impersonate it.
        identity_lines = None
        await _review_impersonation(app, request, cluster, identity, role, exchange)
    else:
        identity_lines = identity_block(identity, role)
    _HOT.auth.observe(time.perf_counter() - started)
    return await forward(
        app,
        request,
        cluster,
        path.target,
        identity_lines,
        keep_client_impersonation=client_impersonates,
        exchange=exchange,
    )


def _cluster_not_found(cluster_id: str) -> NotFound:
    """kube-apiserver's words for a missing object; the same for a cluster that does not
    exist and one the caller holds no role on."""
    return NotFound(
        f'clusters "{cluster_id}" not found', details={"name": cluster_id, "kind": "clusters"}
    )


async def _review_impersonation(
    app: web.Application,
    request: Request,
    cluster: Cluster,
    identity: Identity,
    role: str,
    exchange: Exchange,
) -> None:
    """Refuse ``Impersonate-*`` fields the cluster's RBAC does not let the caller send:
    one ``SelfSubjectAccessReview`` per question, as the caller, through the tunnel
    (``gateway.proxy.impersonation_review``). Whether the fields are well formed is
    checked after (``impersonation.check_client_impersonation``, a 400)."""
    try:
        questions = reviews_for(request.raw_headers)
    except UnsafeHead as unsafe:
        raise BadRequest(f"the request cannot be forwarded: {unsafe}") from None
    if not questions:
        return
    try:
        link = app[TUNNELS].pick(cluster.id)
    except NoAgentSession:
        link = await _wait_for_link(app, cluster)
    ask = partial(
        ask_cluster,
        link.pool,
        _agent_block(link.info.api_host, link.info.authorization),
        identity_block(identity, role),
        request_id=exchange.request_id,
    )
    # The reviews hold one of the caller's share of the cluster's streams, as a request.
    quota = app.get(STREAM_QUOTA)
    key = (cluster.id, identity.user_id)
    if quota is not None:
        limit = quota.limit_for(link.session.peer_max_streams)
        if not quota.take(key, limit):
            raise TooManyRequests(
                f"too many requests in flight: user {identity.user_id} holds {limit} "
                f"streams of cluster {cluster.name} (tunnel.max_streams_per_user)"
            )
    try:
        refused = await app[IMPERSONATION_REVIEWS].check(cluster.id, identity, role, questions, ask)
    finally:
        if quota is not None:
            quota.give(key)
    if refused is not None:
        raise refused


_UPGRADE_SUBRESOURCES = frozenset({"exec", "attach", "portforward"})
_UPGRADE_PROTOCOLS = frozenset({"websocket", "spdy/3.1"})


def _upgrade_allowed(request: Request, path: str) -> bool:
    """What kubectl upgrades: exec, attach and port-forward, to WebSocket or SPDY/3.1
    (never h2c, never another path); and WebSockets through the API server's proxy."""
    segments = path.rstrip("/").split("/")
    if segments[-1] not in _UPGRADE_SUBRESOURCES and "proxy" not in segments:
        return False
    offered = {p.strip().lower() for p in request.headers.get("Upgrade", "").split(",")}
    return bool(offered) and offered <= _UPGRADE_PROTOCOLS


async def forward(
    app: web.Application,
    request: Request,
    cluster: Cluster,
    target: str,
    identity: CheckedFields | None,
    keep_client_impersonation: bool = False,
    exchange: Exchange | None = None,
) -> Answer:
    """Send the request to the cluster's API server through a tunnel; stream the answer.

    ``exchange`` is None for the gateway's own requests (not counted, not audited).
    """
    try:
        link = app[TUNNELS].pick(cluster.id)
    except NoAgentSession:
        link = await _wait_for_link(app, cluster)
    quota = app.get(STREAM_QUOTA)
    identity_of = exchange.identity if exchange is not None else None
    if quota is None or identity_of is None:
        return await _send(
            app, request, cluster, link, target, identity, keep_client_impersonation, exchange
        )
    # One user may hold only so many of a cluster's tunnel streams: the rest stay for
    # the others (a user's watches could otherwise take them all).
    key = (cluster.id, identity_of.user_id)
    limit = quota.limit_for(link.session.peer_max_streams)
    if not quota.take(key, limit):
        raise TooManyRequests(
            f"too many requests in flight: user {identity_of.user_id} holds {limit} "
            f"streams of cluster {cluster.name} (tunnel.max_streams_per_user)"
        )
    try:
        answer = await _send(
            app, request, cluster, link, target, identity, keep_client_impersonation, exchange
        )
    except BaseException:
        quota.give(key)
        raise
    if isinstance(answer.upgrade, upgrade.Upgraded):
        answer.upgrade.when_done(partial(quota.give, key))  # held for the session
    else:
        quota.give(key)
    return answer


async def _wait_for_link(app: web.Application, cluster: Cluster) -> AgentLink:
    """The tunnel to ``cluster`` when this replica has none yet (503 when none comes)."""
    # Another replica holds a tunnel: the agent is on its way here too (a worker
    # that just started). Only then is waiting worth it.
    if not app[REPLICAS].has_tunnel_anywhere(cluster.id):
        raise UpstreamUnavailable(
            f"cluster {cluster.name} ({cluster.id}) is unavailable: no agent is connected"
        )
    try:
        return await app[TUNNELS].wait_for(cluster.id, WAIT_FOR_TUNNEL_S)
    except NoAgentSession:
        raise UpstreamUnavailable(
            f"cluster {cluster.name} ({cluster.id}) is unavailable: its agent has not "
            "reached this gateway replica yet"
        ) from None


async def _send(
    app: web.Application,
    request: Request,
    cluster: Cluster,
    link: AgentLink,
    target: str,
    identity: CheckedFields | None,
    keep_client_impersonation: bool,
    exchange: Exchange | None,
) -> Answer:
    """``forward`` once the tunnel is chosen (and the user's stream counted)."""
    upgrade_request = request.upgrade
    body: bytes | AsyncIterator[bytes] | None = None
    framing: Header | None = None
    length = request.content_length
    if request.body_exists:
        if length is not None and length <= BUFFER_LIMIT:
            body = await request.read()
            framing = (b"Content-Length", b"%d" % len(body))
            if exchange is not None and exchange.wants_body and exchange.info is not None:
                exchange.audit_body = audit.request_body(
                    exchange.info,
                    request.headers.get("Content-Type", ""),
                    body,
                    app[AUDIT].settings.max_body,
                )
        elif length is not None:
            body = _BodyOut(request, chunked=False)
            framing = (b"Content-Length", b"%d" % length)
        else:
            # Chunked: up to BUFFER_LIMIT is read before a tunnel stream is taken, so a
            # slow or malformed body holds no stream and the API server never sees it.
            pieces = request.iter_any().__aiter__()
            first, whole = await _read_up_to(pieces, BUFFER_LIMIT)
            if whole:
                body = b"".join(first)
                framing = (b"Content-Length", b"%d" % len(body))
            else:
                body = _BodyOut(request, chunked=True, pieces=pieces, first=first)
                framing = (b"Transfer-Encoding", b"chunked")
    elif request.method in {"POST", "PUT", "PATCH"} and not upgrade_request:
        framing = (b"Content-Length", b"0")
    try:
        head = _head(
            request,
            target,
            link,
            identity,
            keep_client_impersonation,
            upgrade_request,
            framing,
            exchange.request_id if exchange is not None else "",
        )
    except UnsafeHead as unsafe:  # its own name: mypyc types ``exc`` by its first use
        raise BadRequest(f"the request cannot be forwarded: {unsafe}") from None
    sent = time.perf_counter()
    try:
        upstream = await link.pool.request(
            request.method,
            head,
            body,
            upgrade=upgrade_request,
            long_running=exchange is not None
            and exchange.info is not None
            and exchange.info.long_running,
        )
    except (UpstreamError, TunnelError) as exc:
        if isinstance(exc, TooManyStreams):
            raise UpstreamUnavailable(f"cluster {cluster.name}: tunnel is busy: {exc}") from None
        raise UpstreamUnavailable(
            f"cluster {cluster.name} ({cluster.id}): {exc}", status=502
        ) from None
    _HOT.roundtrip.observe(time.perf_counter() - sent)
    del head, body  # not held for the life of a watch
    if exchange is not None:
        exchange.status = upstream.status
    if upstream.upgraded:
        return upgrade.switching_from_upstream(upstream, request, exchange, app[SESSIONS])
    return await _respond(app, request, upstream, exchange)


async def _respond(
    app: web.Application, request: Request, upstream: Response, exchange: Exchange | None
) -> Answer:
    length = upstream.content_length
    request_id = exchange.request_id if exchange is not None else ""
    handed_on = False
    try:
        if upstream.complete or (length is not None and length <= BUFFER_LIMIT):
            try:
                body = await upstream.read_all()
            except (UpstreamError, TunnelError) as exc:
                raise UpstreamUnavailable(str(exc), status=502) from None
            upstream.release()
            return whole(
                upstream.status, upstream.reason, upstream.headers, body, request_id=request_id
            )
        writer = await request.start_answer(
            upstream.status, upstream.reason, upstream.headers, length, request_id
        )
        upstream.headers.clear()  # written: not held for the life of a watch
        unregister = None
        long_running = False
        if exchange is not None:
            # Ended as if done when its identity loses access (gateway.proxy.sessions), and by
            # a stopping gateway if long-running (watches, followed logs).
            long_running = exchange.info is not None and exchange.info.long_running
            unregister = sessions.hold(
                app[SESSIONS],
                app[DRAIN] if long_running else None,
                exchange.identity,
                exchange.cluster_id,
                exchange.role,
                upstream.end_early,
            )
        side = writer.parking() if long_running else None
        if side is not None:
            # The rest by callbacks, with no task waiting (gateway.proxy.parked).
            relay = ParkedAnswer(upstream, side, unregister)
            handed_on = True
            relay.start()
            return parked(relay)
        try:
            while chunk := await upstream.read_chunk():
                await writer.write(chunk)
        except (UpstreamError, TunnelError) as exc:
            # The status line is out: the only honest signal left is to cut the connection
            # (on HTTP/2, only the stream).
            logger.info("upstream failed mid-response: %s", exc)
            request.cut()
            return streamed(False)
        finally:
            if unregister is not None:
                unregister()
        await writer.end()
        upstream.release()
        return streamed(writer.keep_alive)
    finally:
        if not upstream.complete and not handed_on:
            upstream.stream.reset()

"""The gateway's own Kubernetes API client for each cluster, through its tunnel.

Controllers use ``kubeapi.KubeClient``. Its HTTP goes to an internal listener on a Unix
socket in the state directory (mode 0600); that listener forwards
``/clusters/<id>/<path>`` through the cluster's tunnel as the agent's service
account, with no impersonation. So the gateway's controllers and kubectl share one
forwarding path, and no internal port is reachable from the network.

Every request that path carries takes a token from its cluster's bucket first
(``DownstreamRate``: one per process, shared by all internal listeners), so what the
gateway asks of a cluster on its own behalf (the cluster's controller, the access and
ACE syncs) stays within ``controller.requests_per_second`` and ``request_burst``
whatever runs; a watch is one request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from config.schema import ControllerSettings
from gateway.clusters.replicas import REPLICAS
from gateway.clusters.tunnels import TUNNELS
from gateway.controllers.kubeapi import NO_TIMEOUT, KubeClient
from gateway.errors import BadRequest, GatewayError, NotFound, k8s_response
from gateway.identity.directory import DIRECTORY
from gateway.keys import SETTINGS
from gateway.proxy.handler import forward
from gateway.proxy.heads import CACHED_NAME_BYTES
from gateway.proxy.impersonation import IMPERSONATE_PREFIX
from gateway.proxy.model import (
    BODY_HIGH_WATER,
    STREAMED,
    WHOLE,
    AnswerWriter,
    Header,
    ParkedSide,
    Request,
)
from gateway.proxy.paths import BadPath, check_segments
from gateway.proxy.rawresponse import HOP_AND_FRAMING
from gateway.telemetry import metrics
from gateway.telemetry.audit import REQUEST_ID_HEADER
from tunnel.cluster_state import TokenBucket

logger = logging.getLogger(__name__)

INTERNAL_HOST = "http://herdgate-internal"
MAX_SOCKET_PATH = 100
INTERNAL_KEEPALIVE_S = 15.0
"""How long an idle connection to the internal socket stays pooled (aiohttp's default,
named: a connection pair of this process's own may outlive the request by this long)."""


async def _internal_handler(request: web.Request) -> web.StreamResponse:
    cluster_id = request.match_info["id"]
    raw = request.raw_path
    prefix = f"/clusters/{cluster_id}"
    target = raw[len(prefix) :] or "/"
    try:
        check_segments(target.partition("?")[0])
    except BadPath as exc:
        return k8s_response(BadRequest(str(exc)))
    cluster = request.app[DIRECTORY].clusters.get(cluster_id)
    if cluster is None:
        return k8s_response(NotFound(f"cluster {cluster_id} not found"))
    raw_headers: list[Header] = list(request.raw_headers)
    connection = request.headers.get("Connection", "")
    if "upgrade" in connection.lower() and "Upgrade" in request.headers:
        return k8s_response(GatewayError(501, "the internal socket carries no upgrades"))
    side = InternalSide(request)
    version = request.version
    internal = Request(
        side,
        request.method,
        request.raw_path,
        f"{version.major}.{version.minor}",
        raw_headers,
        keep_alive=request.keep_alive,
        upgrade=False,
        content_length=request.content_length,
        body_exists=request.body_exists,
        expect_continue=False,  # aiohttp answers it
        authorization=request.headers.get("Authorization"),
        user_agent=request.headers.get("User-Agent", ""),
        impersonates=any(n.lower().startswith(IMPERSONATE_PREFIX) for n, _ in raw_headers),
    )
    await request.app[DOWNSTREAM_RATE].take(cluster_id)
    body = asyncio.ensure_future(side.feed_body(internal))
    try:
        answer = await forward(request.app, internal, cluster, target, None)
    except GatewayError as exc:
        return k8s_response(exc)
    except ConnectionResetError:
        # The controller's own client left (a watch it cancelled): nobody to answer;
        # aiohttp takes a response to a closed connection quietly, an exception loudly.
        return side.response if side.response is not None else web.Response(status=499)
    finally:
        body.cancel()
    if answer.kind == WHOLE:
        headers = _response_headers(answer.headers)
        if answer.request_id:
            headers[REQUEST_ID_HEADER] = answer.request_id
        return web.Response(
            status=answer.status, reason=answer.reason, headers=headers, body=answer.body
        )
    if answer.kind != STREAMED or side.response is None:  # pragma: no cover - no upgrades
        raise ConnectionResetError("the answer broke off")
    return side.response


class InternalSide:
    """The internal socket's side of a request (``gateway.proxy.model.RequestSide``):
    aiohttp's request, its body fed to the proxy's ``Request``, its answer aiohttp's."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.closing = False
        self.remote = request.remote or ""
        self.response: web.StreamResponse | None = None
        """The streamed answer, once started."""
        self._room = asyncio.Event()
        self._room.set()

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._request.transport

    async def feed_body(self, request: Request) -> None:
        """aiohttp's body into ``request`` as it arrives (waiting while it holds much)."""
        try:
            if self._request.body_exists:
                async for piece in self._request.content.iter_any():
                    await self._room.wait()
                    request.feed_body(piece)
            request.feed_eof()
        except (ConnectionError, aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
            request.fail(ConnectionResetError(f"the body broke off: {exc}"))

    def continue_if_expected(self, request: Request) -> None:
        return None  # aiohttp answers Expect itself

    def body_backlogged(self) -> None:
        self._room.clear()

    def body_read(self, size: int, held: int) -> None:
        if held < BODY_HIGH_WATER // 2:
            self._room.set()

    def cut(self) -> None:
        transport = self._request.transport
        if transport is not None:
            transport.close()

    def start_answer(
        self,
        request: Request,
        status: int,
        reason: str,
        upstream_headers: list[Header],
        length: int | None,
        request_id: str,
        bodyless: bool,
    ) -> AnswerWriter:
        headers = _response_headers(upstream_headers)
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        response = web.StreamResponse(status=status, reason=reason, headers=headers)
        if length is not None:
            response.content_length = length
        self.response = response
        return _Writer(response, self._request)


class _Writer:
    def __init__(self, response: web.StreamResponse, request: web.Request) -> None:
        self._response = response
        self._request = request

    @property
    def keep_alive(self) -> bool:
        return bool(self._response.keep_alive)

    async def write(self, data: bytes | bytearray) -> None:
        if not self._response.prepared:
            await self._response.prepare(self._request)
        await self._response.write(data)

    async def end(self) -> None:
        if not self._response.prepared:
            await self._response.prepare(self._request)
        await self._response.write_eof()

    def parking(self) -> ParkedSide | None:
        return None


def _response_headers(raw: list[Header]) -> CIMultiDict[str]:
    """The API server's header lines as aiohttp's, without hop-by-hop and framing ones."""
    headers: CIMultiDict[str] = CIMultiDict()
    names = _HEADER_NAMES
    for name, value in raw:
        text = names.get(name)
        if text is None:
            text = "" if name.lower() in HOP_AND_FRAMING else name.decode("latin-1")
            if len(names) < 256 and len(name) <= CACHED_NAME_BYTES:  # a small, fixed set
                names[name] = text
        if text:
            headers.add(text, value.decode("latin-1"))
    return headers


# Header names decoded once; "" marks the ones the gateway does not pass on.
_HEADER_NAMES: dict[bytes, str] = {}


class DownstreamRate:
    """One token bucket per cluster for the gateway's own requests to it."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a request rate needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def wait_for(self, cluster_id: str) -> float:
        """Take a token for one request to ``cluster_id``: the seconds to wait first."""
        now = self._clock()
        bucket = self._buckets.get(cluster_id)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_full(now)
            bucket = self._buckets[cluster_id] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(now)

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that are full again (nothing owed: as good as new)."""
        for key, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.at) * bucket.rate >= bucket.burst:
                del self._buckets[key]

    async def take(self, cluster_id: str) -> None:
        wait = self.wait_for(cluster_id)
        if wait > 0:
            metrics.DOWNSTREAM_THROTTLED.labels(cluster_id).inc(wait)
            await asyncio.sleep(wait)


DOWNSTREAM_RATE = web.AppKey("downstream_rate", DownstreamRate)
MAX_BUCKETS = 4096
"""Beyond this many clusters' buckets, the full ones are dropped (recreated full)."""


def downstream_rate(public: web.Application) -> DownstreamRate:
    """This process's ``DownstreamRate`` (made on first use, during start-up)."""
    rate = public.get(DOWNSTREAM_RATE)
    if rate is None:
        settings = public[SETTINGS].controller if SETTINGS in public else ControllerSettings()
        rate = DownstreamRate(
            settings.requests_per_second,
            settings.request_burst,
            time.monotonic,  # the clock asyncio's loop keeps too
        )
        public[DOWNSTREAM_RATE] = rate
    return rate


def internal_app(public: web.Application) -> web.Application:
    app = web.Application(client_max_size=16 * 1024**2)
    app[DIRECTORY] = public[DIRECTORY]
    app[TUNNELS] = public[TUNNELS]
    app[REPLICAS] = public[REPLICAS]
    app[DOWNSTREAM_RATE] = downstream_rate(public)
    app.router.add_route("*", "/clusters/{id}/{tail:.*}", _internal_handler)
    return app


class InternalListener:
    """The Unix-socket listener; ``client(cluster_id)`` builds API clients that use it."""

    def __init__(self, public: web.Application, state_dir: Path, name: str = "internal") -> None:
        # One socket per process and ``name`` (each controller may have its own): several
        # workers share the state directory. Unix socket paths are limited to about 100
        # bytes; a deep state directory falls back to a private (0700) temporary directory.
        path = state_dir.resolve() / "run" / f"{name}-{os.getpid()}.sock"
        self._temp_dir: Path | None = None
        if len(str(path)) > MAX_SOCKET_PATH:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="herdgate-"))
            path = self._temp_dir / "internal.sock"
        self.path = path
        self._runner = web.AppRunner(internal_app(public), access_log=None)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.unlink(missing_ok=True)
        await self._runner.setup()
        site = web.UnixSite(self._runner, str(self.path))
        await site.start()
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._runner.cleanup()
        self.path.unlink(missing_ok=True)
        if self._temp_dir is not None:
            with contextlib.suppress(OSError):
                self._temp_dir.rmdir()

    def client(self, cluster_id: str) -> KubeClient:
        """A client for the cluster's API (as the agent's account) on this listener's
        session, which is built once: with no limit on connections (each cluster's
        watches hold one each) and no SSL context (the socket is our own; building one
        with the system's CA store per call would not scale to thousands of clusters,
        docs/benchmarks.md, "Issue 20, first measurements"). Nothing to close."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(
                    path=str(self.path), limit=0, keepalive_timeout=INTERNAL_KEEPALIVE_S
                ),
                read_bufsize=2**21,
                timeout=NO_TIMEOUT,
            )
        return KubeClient(self._session, f"{INTERNAL_HOST}/clusters/{cluster_id}")


INTERNAL_LISTENER = web.AppKey("internal_listener", InternalListener)
"""This process's internal socket (set by ``cluster_controller.cluster_context``), for
every controller."""

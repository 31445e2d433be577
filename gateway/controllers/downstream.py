"""The gateway's own Kubernetes API client for each cluster, through its tunnel.

Controllers use kubernetes-asyncio. Its HTTP goes to an internal listener on a Unix
socket in the state directory (mode 0600); that listener forwards
``/clusters/<id>/<path>`` through the cluster's tunnel as the agent's service
account, with no impersonation. So the gateway's controllers and kubectl share one
forwarding path, and no internal port is reachable from the network.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.clusters.replicas import REPLICAS
from gateway.clusters.tunnels import TUNNELS
from gateway.errors import BadRequest, GatewayError, NotFound, k8s_response
from gateway.identity.directory import DIRECTORY
from gateway.proxy.exchange import REQUEST_ID_HEADER
from gateway.proxy.handler import forward
from gateway.proxy.heads import CACHED_NAME_BYTES
from gateway.proxy.impersonation import IMPERSONATE_PREFIX
from gateway.proxy.model import STREAMED, WHOLE, AnswerWriter, Header, HeaderView
from gateway.proxy.paths import BadPath, check_segments
from gateway.proxy.rawresponse import HOP_AND_FRAMING

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

logger = logging.getLogger(__name__)

INTERNAL_HOST = "http://herdgate-internal"
MAX_SOCKET_PATH = 100


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
    internal = InternalRequest(request)
    if internal.upgrade:
        return k8s_response(GatewayError(501, "the internal socket carries no upgrades"))
    try:
        answer = await forward(request.app, internal, cluster, target, None)
    except GatewayError as exc:
        return k8s_response(exc)
    if answer.kind == WHOLE:
        headers = _response_headers(answer.headers)
        if answer.request_id:
            headers[REQUEST_ID_HEADER] = answer.request_id
        return web.Response(
            status=answer.status, reason=answer.reason, headers=headers, body=answer.body
        )
    if answer.kind != STREAMED or internal.response is None:  # pragma: no cover - no upgrades
        raise ConnectionResetError("the answer broke off")
    return internal.response


class InternalRequest:
    """A request on the internal socket as the proxy reads one (``gateway.proxy.model.Request``):
    aiohttp's request, and its answer as aiohttp's response."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.method = request.method
        self.raw_path = request.raw_path
        self.version = f"{request.version.major}.{request.version.minor}"
        self.raw_headers: list[Header] = list(request.raw_headers)
        self.headers = HeaderView(self.raw_headers)
        self.authorization: str | None = request.headers.get("Authorization")
        self.impersonates = any(
            name.lower().startswith(IMPERSONATE_PREFIX) for name, _ in self.raw_headers
        )
        self.user_agent = request.headers.get("User-Agent", "")
        self.remote = request.remote or ""
        connection = request.headers.get("Connection", "")
        self.upgrade = "upgrade" in connection.lower() and "Upgrade" in request.headers
        self.content_length = request.content_length
        self.body_exists = request.body_exists
        self.keep_alive = request.keep_alive
        self.response: web.StreamResponse | None = None
        """The streamed answer, once started."""

    @property
    def path(self) -> str:
        return self.raw_path.partition("?")[0]

    async def read(self) -> bytes:
        return await self._request.read()

    def iter_any(self) -> AsyncIterator[bytes]:
        return self._request.content.iter_any()

    async def start_answer(
        self,
        status: int,
        reason: str,
        headers: list[Header],
        length: int | None,
        request_id: str,
        bodyless: bool = False,
    ) -> AnswerWriter:
        response_headers = _response_headers(headers)
        if request_id:
            response_headers[REQUEST_ID_HEADER] = request_id
        response = web.StreamResponse(status=status, reason=reason, headers=response_headers)
        if length is not None:
            response.content_length = length
        await response.prepare(self._request)
        self.response = response
        return _Writer(response)

    def cut(self) -> None:
        transport = self._request.transport
        if transport is not None:
            transport.close()


class _Writer:
    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response

    @property
    def keep_alive(self) -> bool:
        return bool(self._response.keep_alive)

    async def write(self, data: bytes | bytearray) -> None:
        await self._response.write(data)

    async def end(self) -> None:
        await self._response.write_eof()


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


def internal_app(public: web.Application) -> web.Application:
    app = web.Application(client_max_size=16 * 1024**2)
    app[DIRECTORY] = public[DIRECTORY]
    app[TUNNELS] = public[TUNNELS]
    app[REPLICAS] = public[REPLICAS]
    app.router.add_route("*", "/clusters/{id}/{tail:.*}", _internal_handler)
    return app


class InternalListener:
    """The Unix-socket listener; ``client(cluster_id)`` builds API clients that use it."""

    def __init__(self, public: web.Application, state_dir: Path) -> None:
        # One socket per process: several workers share the state directory. Unix socket
        # paths are limited to about 100 bytes; a deep state directory falls back to a
        # private (0700) temporary directory.
        path = state_dir.resolve() / "run" / f"internal-{os.getpid()}.sock"
        self._temp_dir: Path | None = None
        if len(str(path)) > MAX_SOCKET_PATH:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="herdgate-"))
            path = self._temp_dir / "internal.sock"
        self.path = path
        self._runner = web.AppRunner(internal_app(public), access_log=None)

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.unlink(missing_ok=True)
        await self._runner.setup()
        site = web.UnixSite(self._runner, str(self.path))
        await site.start()
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        await self._runner.cleanup()
        self.path.unlink(missing_ok=True)
        if self._temp_dir is not None:
            with contextlib.suppress(OSError):
                self._temp_dir.rmdir()

    @contextlib.asynccontextmanager
    async def client(self, cluster_id: str) -> AsyncIterator[ApiClient]:
        """A kubernetes-asyncio ``ApiClient`` for the cluster (as the agent's account)."""
        from kubernetes_asyncio.client import ApiClient, Configuration

        config = Configuration(host=f"{INTERNAL_HOST}/clusters/{cluster_id}")
        api = ApiClient(config)
        # kubernetes-asyncio builds a TCP session; swap in one that dials our socket.
        await api.rest_client.pool_manager.close()
        api.rest_client.pool_manager = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.path)), read_bufsize=2**21
        )
        try:
            yield api
        finally:
            await api.close()

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
from typing import TYPE_CHECKING, cast

import aiohttp
from aiohttp import web

from gateway.clusters.replicas import REPLICAS
from gateway.clusters.tunnels import TUNNELS
from gateway.errors import BadRequest, GatewayError, NotFound, k8s_response
from gateway.identity.directory import DIRECTORY
from gateway.proxy.handler import forward
from gateway.proxy.paths import BadPath, check_segments

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
    try:
        return cast(web.StreamResponse, await forward(request.app, request, cluster, target, None))
    except GatewayError as exc:
        return k8s_response(exc)


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

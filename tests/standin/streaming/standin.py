"""A minimal API server around standin.streaming, enough for real kubectl.

It serves ``/version``, legacy discovery, ``GET`` of the pods it knows (always Running) and the
``exec``/``attach``/``portforward`` subresources, over HTTP or HTTPS, without authentication.
The full stand-in (standin.app) does the same behind its REST core.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from config.tls import ensure_generated_certs, server_context
from standin import streaming

NAMESPACE = "default"


def make_pod(
    name: str, namespace: str = NAMESPACE, containers: tuple[str, ...] = ("main",)
) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"00000000-0000-4000-8000-{abs(hash(name)) % 10**12:012d}",
            "resourceVersion": "1",
            "creationTimestamp": "2024-01-01T00:00:00Z",
        },
        "spec": {
            "containers": [
                {
                    "name": c,
                    "image": "busybox",
                    "ports": [{"containerPort": 80, "name": "http", "protocol": "TCP"}],
                    "env": [{"name": "GREETING", "value": "hello"}],
                }
                for c in containers
            ],
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {
                    "name": c,
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "image": "busybox",
                    "imageID": "",
                    "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}},
                }
                for c in containers
            ],
        },
    }


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("true", "1")


@dataclass
class StandIn:
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    """(method, path_qs, headers) of every request, for assertions."""
    active: int = 0
    """Streaming handlers still running."""
    refuse_websockets: bool = False
    """Answer WebSocket upgrades with 400 (like a proxy that cannot pass them): kubectl 1.30+
    must fall back to SPDY."""

    def add_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.pods[(meta["namespace"], meta["name"])] = pod

    def _pod(self, request: web.Request) -> dict[str, Any]:
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.pods:
            raise web.HTTPNotFound(
                text=json.dumps(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": "NotFound",
                        "code": 404,
                        "message": f'pods "{key[1]}" not found',
                    }
                ),
                content_type="application/json",
            )
        return self.pods[key]

    @web.middleware
    async def record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs, dict(request.headers)))
        streaming_request = request.path.rsplit("/", 1)[-1] in ("exec", "attach", "portforward")
        if streaming_request and self.refuse_websockets and streaming.is_websocket_request(request):
            return web.Response(status=400, text="websockets are not passed through here\n")
        self.active += streaming_request
        try:
            response: web.StreamResponse = await handler(request)
        finally:
            self.active -= streaming_request
        return response

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.record])
        pod_path = "/api/v1/namespaces/{namespace}/pods/{name}"
        app.router.add_get("/version", self.version)
        app.router.add_get("/api", self.api)
        app.router.add_get("/apis", self.apis)
        app.router.add_get("/api/v1", self.api_v1)
        app.router.add_get(pod_path, self.get_pod)
        for method in ("GET", "POST"):
            app.router.add_route(method, pod_path + "/exec", self.exec)
            app.router.add_route(method, pod_path + "/attach", self.attach)
            app.router.add_route(method, pod_path + "/portforward", self.portforward)
        return app

    async def version(self, request: web.Request) -> web.Response:
        return _json(
            {
                "major": "1",
                "minor": "32",
                "gitVersion": "v1.32.0",
                "gitCommit": "stand-in",
                "gitTreeState": "clean",
                "buildDate": "2024-01-01T00:00:00Z",
                "goVersion": "go1.23",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        )

    async def api(self, request: web.Request) -> web.Response:
        return _json(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}
                ],
            }
        )

    async def apis(self, request: web.Request) -> web.Response:
        return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})

    async def api_v1(self, request: web.Request) -> web.Response:
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources: list[dict[str, Any]] = [
            {
                "name": "pods",
                "singularName": "pod",
                "namespaced": True,
                "kind": "Pod",
                "verbs": verbs,
                "shortNames": ["po"],
                "categories": ["all"],
            },
        ]
        resources.extend(
            {
                "name": f"pods/{sub}",
                "singularName": "",
                "namespaced": True,
                "kind": "PodExecOptions" if sub == "exec" else "Pod",
                "verbs": ["create", "get"],
            }
            for sub in ("exec", "attach", "portforward")
        )
        return _json({"kind": "APIResourceList", "groupVersion": "v1", "resources": resources})

    async def get_pod(self, request: web.Request) -> web.Response:
        return _json(self._pod(request))

    async def exec(self, request: web.Request) -> web.StreamResponse:
        pod = self._pod(request)
        return await streaming.serve_exec(
            request,
            pod,
            request.query.getall("command", []),
            request.query.get("container", pod["spec"]["containers"][0]["name"]),
            _flag(request, "stdin"),
            _flag(request, "stdout"),
            _flag(request, "stderr"),
            _flag(request, "tty"),
        )

    async def attach(self, request: web.Request) -> web.StreamResponse:
        pod = self._pod(request)
        return await streaming.serve_attach(
            request,
            pod,
            request.query.get("container", pod["spec"]["containers"][0]["name"]),
            _flag(request, "stdin"),
            _flag(request, "stdout"),
            _flag(request, "stderr"),
            _flag(request, "tty"),
        )

    async def portforward(self, request: web.Request) -> web.StreamResponse:
        pod = self._pod(request)
        ports = [int(p) for v in request.query.getall("ports", []) for p in v.split(",") if p]
        return await streaming.serve_portforward(request, pod, ports)


@dataclass
class Server:
    url: str
    kubeconfig: Path
    standin: StandIn
    ca_pem: bytes | None


def write_kubeconfig(path: Path, url: str, ca_pem: bytes | None) -> None:
    cluster: dict[str, Any] = {"server": url}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "standin", "cluster": cluster}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
        "contexts": [
            {
                "name": "standin",
                "context": {"cluster": "standin", "user": "tester", "namespace": NAMESPACE},
            }
        ],
        "current-context": "standin",
    }
    path.write_text(json.dumps(config))


@asynccontextmanager
async def run_standin(
    *, tls: bool = False, directory: Path | None = None, standin: StandIn | None = None
) -> AsyncIterator[Server]:
    standin = standin or StandIn()
    if not standin.pods:
        standin.add_pod(make_pod("web"))
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        tmpdir = Path(tmp)
        ssl_context: ssl.SSLContext | None = None
        ca_pem: bytes | None = None
        if tls:
            paths, _ = ensure_generated_certs(tmpdir, ["localhost", "127.0.0.1"])
            ssl_context = server_context(paths.cert, paths.key)
            ca_pem = paths.ca.read_bytes()
        runner = web.AppRunner(standin.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        kubeconfig = tmpdir / "kubeconfig"
        write_kubeconfig(kubeconfig, url, ca_pem)
        try:
            yield Server(url=url, kubeconfig=kubeconfig, standin=standin, ca_pem=ca_pem)
        finally:
            await runner.cleanup()

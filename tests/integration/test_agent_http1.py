"""The agent over HTTP/1.1 to the API server, now that HTTP/2 is the default (issue 20).

Two worlds: an API server that offers HTTP/1.1 alone (the stand-in with
``HERDGATE_STANDIN_HTTP2=0``: the agent finds no ``h2`` and relays each stream over a
connection of its own), and an agent with ``apiserver_http2: false`` before an API server
that offers HTTP/2 (it never asks for it). In both, kubectl get, watch and exec work
through the gateway, and the agent's reports of its cluster come in (the cluster is
Ready), with no HTTP/2 connection to the API server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.binaries import kubectl
from tests.integration.conftest import World, start_world_with_env, stop_world
from tests.integration.downstream_rbac import ok
from tests.integration.env import kubectl_run, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.request_path]

WORLDS = {
    "api-server-http1-only": {"HERDGATE_STANDIN_HTTP2": "0"},
    "agent-http2-off": {"HERDGATE_APISERVER_HTTP2": "false"},
}


@pytest.fixture(scope="module", params=sorted(WORLDS))
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    env = WORLDS[request.param]
    w = start_world_with_env(tmp_path_factory.mktemp("agent-http1"), env, name="h1")
    try:
        yield w
    finally:
        stop_world(w)


def _h2_connections(world: World) -> int:
    path = world.standin.workdir / "h2.json"
    return int(json.loads(path.read_text())["connections"]) if path.exists() else 0


def test_get_watch_exec_and_reports_without_http2(world: World) -> None:
    kc = world.kubeconfig_for(world.admin, "h1-admin")
    k = kubectl("1.32")
    out = ok(kubectl_run(k, kc, "get", "namespaces", "-o", "json"))
    assert "default" in {i["metadata"]["name"] for i in json.loads(out)["items"]}
    ok(kubectl_run(k, kc, "create", "configmap", "h1-cm"))
    watched = kubectl_run(k, kc, "get", "configmaps", "--watch", "--request-timeout=3s",
                          "-o", "name")  # fmt: skip
    assert "configmap/h1-cm" in watched.stdout, watched
    ok(kubectl_run(k, kc, "run", "h1-shell", "--image=busybox", "--restart=Never"))
    wait_until(lambda: "Running" in kubectl_run(k, kc, "get", "pod", "h1-shell").stdout, 15, "pod")
    assert ok(kubectl_run(k, kc, "exec", "h1-shell", "--", "echo", "x")).strip() == "x"

    def ready() -> bool:
        conditions = world.cluster().get("conditions") or []
        assert isinstance(conditions, list)
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    wait_until(ready, 30, "the agent's reports never said the cluster is Ready")
    time.sleep(1)
    assert _h2_connections(world) == 0

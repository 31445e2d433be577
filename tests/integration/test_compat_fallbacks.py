"""A gateway and an agent whose dependencies' private internals are all broken.

A ``sitecustomize`` (loaded by Python at start-up through ``PYTHONPATH``, acting only in
``python -m herdgate`` processes) breaks each private thing herdgate relies on the way an
upgrade could: CPython's ``_sslobj`` hidden from all but the ssl module, ``_ssl``'s
library not found by ctypes, aiohttp's WebSocket mask giving wrong bytes,
``RequestHandler.set_parser`` gone and ``Server.connection_lost`` with other parameters.
Both programs must start, say so once per broken thing they rely on (one WARNING each),
and serve on the fallbacks (config.compat): requests and a 1 MB answer through the tunnel
arrive intact; aiohttp's server internals are no longer relied on (the front owns every
connection), so an exec is upgraded as ever; and the gateway still stops cleanly.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import uuid
from collections.abc import Iterator

import pytest

from tests.integration.conftest import World, start_world, stop_world
from tests.integration.env import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.request_path]

SITECUSTOMIZE = '''\
"""Breaks the private internals herdgate relies on (tests/integration/test_compat_fallbacks.py)."""
import sys

if sys.orig_argv[1:3] == ["-m", "herdgate"]:
    import _ssl
    import ssl

    def _hide(cls):
        base = cls.__getattribute__

        def __getattribute__(self, name):
            if name == "_sslobj" and sys._getframe(1).f_globals.get("__name__") != "ssl":
                raise AttributeError(name)
            return base(self, name)

        cls.__getattribute__ = __getattribute__

    _hide(ssl.SSLSocket)
    _hide(ssl.SSLObject)
    _ssl.__file__ = "/nonexistent/_ssl.so"

    import aiohttp._websocket.helpers
    from aiohttp import web, web_protocol

    aiohttp._websocket.helpers.websocket_mask = lambda mask, data: None
    del web_protocol.RequestHandler.set_parser
    _lost = web.Server.connection_lost

    def connection_lost(self, protocol, error=None):
        _lost(self, protocol, error)

    web.Server.connection_lost = connection_lost
'''

GATEWAY_CHECKS = (
    "ssl-socket-direct",
    "ssl-object-direct",
    "openssl-read-ahead",
    "openssl-has-pending",
    "websocket-mask",
)
AGENT_CHECKS = GATEWAY_CHECKS


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("broken-internals")
    site = tmp / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", path)  # the gateway and the agent (the stand-in ignores it)
        w = start_world(tmp)
    try:
        yield w
    finally:
        stop_world(w)


def warning_lines(log: str, check: str) -> list[str]:
    return [line for line in log.splitlines() if f"dependency check {check} failed" in line]


def test_each_broken_internal_is_one_warning_in_each_program(world: World) -> None:
    gateway_log = world.gateway.log()
    agent_log = world.agent.log_file.read_text(errors="replace")
    for check in GATEWAY_CHECKS:
        lines = warning_lines(gateway_log, check)
        assert len(lines) == 1, (check, lines)
        assert json.loads(lines[0])["level"] == "warning"
    for check in AGENT_CHECKS:
        assert len(warning_lines(agent_log, check)) == 1, (check, agent_log[-3000:])
    for gone in ("aiohttp-set-parser", "aiohttp-connection-lost"):
        assert gone not in gateway_log and gone not in agent_log
    assert "Traceback" not in gateway_log and "Traceback" not in agent_log


def test_requests_and_a_big_answer_cross_the_tunnel_intact(world: World) -> None:
    _, api = world.user("fallback-owner", role="cluster-owner")
    base = f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces/default/configmaps"
    blob = base64.b64encode(os.urandom(750_000)).decode()  # 1 MB each way
    name = f"big-{uuid.uuid4().hex[:8]}"
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}
    created = api.post(base, {**body, "data": {"blob": blob}})
    assert created["metadata"]["name"] == name
    got = api.get(f"{base}/{name}")
    assert got["data"]["blob"] == blob
    listed = api.get(base)
    assert name in [item["metadata"]["name"] for item in listed["items"]]
    seen = [e for e in world.standin.audit_events() if name in e.get("requestURI", "")]
    assert seen and all(e["impersonatedUser"]["username"] for e in seen), seen


def test_an_exec_is_upgraded_without_aiohttps_internals(world: World) -> None:
    _, api = world.user("fallback-exec", role="cluster-owner")
    probe = uuid.uuid4().hex
    pods = world.pod(api, "fallback-exec")
    target = f"{pods}/fallback-exec/exec?command=id&stdout=true"
    head = (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{world.gateway.port}\r\n"
        f"Authorization: Bearer {api.token}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        f"X-Stream-Protocol-Version: v4.channel.k8s.io\r\nX-Probe: {probe}\r\n\r\n"
    )
    context = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    context.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", world.gateway.port), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 101 "), answer[:500]

    def received() -> list[dict[str, object]]:
        return [
            e
            for e in world.standin.audit_events()
            if any(probe in str(value) for _, value in e.get("requestHeaders", []))
        ]

    wait_until(lambda: len(received()) == 1, 10, "the API server never saw the exec")


def test_the_gateway_still_stops_cleanly(world: World) -> None:
    """Last: stops the module's gateway (``connection_lost`` is broken, so it does not
    wait for closing connections at exit)."""
    process = world.gateway.process
    assert process is not None
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0, world.gateway.log()[-3000:]
    world.gateway.process = None
    assert '"stopped"' in world.gateway.log()

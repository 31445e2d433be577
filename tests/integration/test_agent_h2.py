"""The agent relays ordinary requests as HTTP/2 streams to the API server (issue 20).

Real gateway, agent (``apiserver_http2`` and ``apiserver_http2_all``: every request an
HTTP/2 stream, so that each kind of request crosses the translation; by default only
long-running ones do, ``test_kubectl_proxy`` has that split) and stand-in API server with
HTTP/2 (its default): kubectl get, list, apply (protobuf bodies from 1.32), watch and logs -f
through the gateway work; many watches share a few connections to the API server (counted
on the stand-in's port); exec still works (its own HTTP/1.1 connection); identity
headers reach the stand-in as the gateway wrote them (its audit log); a watch whose
reader stops does not stall the others.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.binaries import kubectl
from tests.integration.conftest import World, start_world_with_env, stop_world
from tests.integration.downstream_rbac import ok
from tests.integration.env import kubectl_run, wait_until
from tests.integration.test_hostile_requests import received, request

pytestmark = [pytest.mark.integration, pytest.mark.request_path]

MAX_STREAMS = 8
"""The stand-in's MAX_CONCURRENT_STREAMS here: more watches than this need a second
connection."""
H2_ENV = {
    "HERDGATE_APISERVER_HTTP2": "true",
    "HERDGATE_APISERVER_HTTP2_ALL": "true",
    "HERDGATE_STANDIN_HTTP2": "1",
    "HERDGATE_STANDIN_H2_MAX_STREAMS": str(MAX_STREAMS),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = start_world_with_env(tmp_path_factory.mktemp("agent-h2"), H2_ENV, name="h2")
    try:
        yield w
    finally:
        stop_world(w)


@pytest.fixture(scope="module")
def admin_kc(world: World) -> Path:
    return world.kubeconfig_for(world.admin, "h2-admin")


def standin_connections(world: World) -> int:
    """Established TCP connections to the stand-in's port (its side of them)."""
    port = int(world.standin.url.rsplit(":", 1)[1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":  # ESTABLISHED
                    count += 1
    return count


def h2_stats(world: World) -> dict[str, int]:
    """The stand-in's HTTP/2 connections and streams so far (``standin.h2front``)."""
    path = world.standin.workdir / "h2.json"
    empty = {"connections": 0, "streams": 0, "open": 0, "active": 0}
    return json.loads(path.read_text()) if path.exists() else empty


def test_the_agent_speaks_http2_to_the_standin(world: World, admin_kc: Path) -> None:
    before = h2_stats(world)
    connections: list[int] = []
    for _ in range(5):
        out = ok(kubectl_run(kubectl("1.32"), admin_kc, "get", "namespaces", "-o", "json"))
        names = {item["metadata"]["name"] for item in json.loads(out)["items"]}
        assert "default" in names
        connections.append(standin_connections(world))
    after = h2_stats(world)
    assert after["streams"] - before["streams"] >= 5, (before, after)
    assert after["connections"] - before["connections"] <= 1, (before, after)
    log = (world.tmp / "agent.log").read_text()
    assert "does not offer HTTP/2" not in log
    # No connection per request (an HTTP/1.1 relay keeps one per tunnel stream while the
    # gateway pools them): after the first request, the count does not grow with them.
    assert max(connections[1:]) <= connections[0], connections


def test_the_agents_reports_go_over_http2_too(world: World) -> None:
    """The agent's own probes, lists and watches of its cluster (its reports to the
    gateway, ``tunnel.cluster_watch``) are streams on the same HTTP/2 connections: no
    HTTP/1.1 connection of their own."""

    def reported() -> bool:
        paths = {
            str(e["requestURI"]).split("?")[0]
            for e in world.standin.audit_events()
            if "cluster-state" in str(e.get("userAgent", ""))
        }
        return {"/readyz", "/version", "/api/v1/nodes", "/api/v1/namespaces"} <= paths

    wait_until(reported, 30, "the agent never probed and listed its cluster for its reports")
    # Its two watches (nodes, namespaces) stay open as streams; every TCP connection to
    # the stand-in is one of the HTTP/2 connections.
    wait_until(lambda: h2_stats(world)["active"] >= 2, 10, f"{h2_stats(world)}")
    assert standin_connections(world) == h2_stats(world)["open"], h2_stats(world)


def test_kubectl_apply_get_delete_with_protobuf(world: World, admin_kc: Path) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "h2-cm", "namespace": "default"},
        "data": {"k": "v" * 5000},
    }
    k = kubectl("1.32")
    ok(kubectl_run(k, admin_kc, "apply", "-f", "-", stdin=json.dumps(manifest)))
    out = ok(kubectl_run(k, admin_kc, "get", "configmap", "h2-cm", "-o", "json"))
    assert json.loads(out)["data"]["k"] == "v" * 5000
    manifest["data"] = {"k": "w"}
    ok(kubectl_run(k, admin_kc, "apply", "-f", "-", stdin=json.dumps(manifest)))
    out = ok(kubectl_run(k, admin_kc, "get", "configmap", "h2-cm", "-o", "json"))
    assert json.loads(out)["data"]["k"] == "w"
    ok(kubectl_run(k, admin_kc, "delete", "configmap", "h2-cm"))


class _Watch:
    """``kubectl get configmaps --watch-only -o name``, its output lines gathered by a
    thread as they come."""

    def __init__(self, kc: Path, name: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env["HOME"] = str(kc.parent / f"home-watch-{name}")
        self.process = subprocess.Popen(
            [kubectl("1.32"), "--kubeconfig", str(kc), "get", "configmaps", "--watch-only",
             "-o", "name"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def count(self, line: str) -> int:
        return self.lines.count(line)

    def stop(self) -> str:
        self.process.terminate()
        _, err = self.process.communicate(timeout=10)
        self._reader.join(timeout=10)
        return err


def _until_open(watchers: list[_Watch], kc: Path, prefix: str) -> list[str]:
    """Create configmaps ``prefix-N`` until every watch has shown one: a kubectl between
    its list and its watch would see a create as listed, not as an event, so only an
    event seen proves a watch is open. The names created, for clean-up."""
    created: list[str] = []
    deadline = time.monotonic() + 60
    while not all(any(line.startswith(f"configmap/{prefix}-") for line in w.lines)
                  for w in watchers):  # fmt: skip
        assert time.monotonic() < deadline, [w.lines for w in watchers]
        created.append(f"{prefix}-{len(created)}")
        ok(kubectl_run(kubectl("1.32"), kc, "create", "configmap", created[-1]))
        time.sleep(1)
    return created


def test_watches_share_connections_up_to_max_concurrent_streams(
    world: World, admin_kc: Path
) -> None:
    idle = h2_stats(world).get("active", 0)
    watchers = [_Watch(admin_kc, str(i)) for i in range(12)]
    k = kubectl("1.32")
    opened: list[str] = []
    try:
        # every watch is open: 12 more streams being served (12 kubectl processes may take
        # a while to start on a busy box)
        wait_until(lambda: h2_stats(world)["active"] >= idle + 12, 60, f"{h2_stats(world)}")
        ended = [w.stop() for w in watchers if w.process.poll() is not None]
        assert not ended, ended
        now = h2_stats(world)
        # 12 watches (and the access sync's own) on MAX_STREAMS-stream connections
        assert now["open"] >= 2, now
        assert now["open"] <= (now["active"] + MAX_STREAMS - 1) // MAX_STREAMS + 1, now
        # No other connection: the agent's own probes and watches (its reports) are
        # streams on them too.
        assert standin_connections(world) == now["open"]
        # The stream count above may include the gateway's own passing requests.
        opened = _until_open(watchers, admin_kc, "h2-opened")
        ok(kubectl_run(k, admin_kc, "create", "configmap", "h2-watched"))
        ok(kubectl_run(k, admin_kc, "delete", "configmap", "h2-watched"))
        # added, then deleted: on every watch
        wait_until(
            lambda: all(w.count("configmap/h2-watched") == 2 for w in watchers),
            30,
            f"{[w.lines for w in watchers]}",
        )
    finally:
        for w in watchers:
            w.stop()
        for name in opened:
            kubectl_run(k, admin_kc, "delete", "configmap", name)


def test_logs_follow_and_exec_still_work(world: World, admin_kc: Path) -> None:
    k = kubectl("1.32")
    ok(kubectl_run(k, admin_kc, "run", "h2-shell", "--image=busybox", "--restart=Never"))
    wait_until(
        lambda: "Running" in kubectl_run(k, admin_kc, "get", "pod", "h2-shell").stdout, 15, "pod"
    )
    out = ok(kubectl_run(k, admin_kc, "exec", "h2-shell", "--", "echo", "over-http1"))
    assert "over-http1" in out
    for version in ("1.32", "1.27"):
        out = ok(kubectl_run(kubectl(version), admin_kc, "exec", "h2-shell", "--", "echo", "x"))
        assert out.strip() == "x"
    # logs -f streams line after line until stopped
    with pytest.raises(subprocess.TimeoutExpired) as stopped:
        kubectl_run(k, admin_kc, "logs", "-f", "h2-shell", timeout=5)
    lines = (stopped.value.output or b"").decode().splitlines()
    assert lines[:3] == ["line 1", "line 2", "line 3"], lines
    assert len(lines) >= 6, lines


def test_identity_headers_reach_the_standin_as_written(world: World) -> None:
    user_id, api = world.user("h2-reader", role="read-only")
    answer, probe = request(world, "GET", f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces",
                            api.token)  # fmt: skip
    assert answer.status == 200, answer
    events = received(world, probe)
    assert len(events) == 1
    fields: list[tuple[str, str]] = [(str(n), str(v)) for n, v in events[0]["requestHeaders"]]
    identity = [(n, v) for n, v in fields if n.lower().startswith("impersonate-")]
    assert ("Impersonate-User", user_id) in identity or any(
        n == "Impersonate-User" for n, _ in identity
    ), identity
    assert not any(n.lower().startswith("x-standin-front") for n, _ in fields)
    user: dict[str, Any] = events[0].get("impersonatedUser") or {}
    assert user, events[0]


def test_a_stopped_reader_does_not_stall_other_watches(world: World, admin_kc: Path) -> None:
    """A raw HTTP/1.1 watch through the gateway that never reads, with large events piling
    up, and a kubectl watch beside it that still gets every event."""
    host, port = "127.0.0.1", world.gateway.port
    import ssl

    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    raw = socket.create_connection((host, port))
    stalled = ctx.wrap_socket(raw, server_hostname=host)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    target = f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces/default/configmaps?watch=1"
    stalled.sendall(
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {world.admin.token}\r\n\r\n".encode()
    )
    watcher = _Watch(admin_kc, "beside")
    k = kubectl("1.32")
    opened: list[str] = []
    try:
        opened = _until_open([watcher], admin_kc, "h2-beside")
        big = "x" * 200_000
        for i in range(8):  # ~1.6 MB the stalled reader never takes
            manifest = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"h2-big-{i}", "namespace": "default"},
                "data": {"b": big},
            }
            ok(kubectl_run(k, admin_kc, "create", "-f", "-", stdin=json.dumps(manifest)))
        ok(kubectl_run(k, admin_kc, "create", "configmap", "h2-after"))
        wanted = ["configmap/h2-after"] + [f"configmap/h2-big-{i}" for i in range(8)]
        wait_until(lambda: all(watcher.count(line) for line in wanted), 30, f"{watcher.lines}")
    finally:
        watcher.stop()
        stalled.close()
        for name in [f"h2-big-{i}" for i in range(8)] + ["h2-after", *opened]:
            kubectl_run(k, admin_kc, "delete", "configmap", name)


@pytest.mark.parametrize("alpn", ["http/1.1", "h2"])
def test_the_standins_front_fields_cannot_be_forged(world: World, alpn: str) -> None:
    """A client's own ``X-Standin-Front-*`` fields are neither believed nor recorded, over
    HTTP/1.1 (aiohttp directly) or HTTP/2 (through the front)."""
    import ssl
    import uuid

    import h2.config
    import h2.connection
    import h2.events

    probe = uuid.uuid4().hex
    host, port = "127.0.0.1", int(world.standin.url.rsplit(":", 1)[1])
    ctx = ssl.create_default_context(cafile=str(world.standin.ca_file))
    ctx.set_alpn_protocols([alpn])
    forged = [
        ("x-standin-front-remote", "203.0.113.9"),
        ("x-standin-front-peercert", '{"subject": [[["commonName", "system:admin"]]]}'),
        ("x-probe", probe),
    ]
    raw = socket.create_connection((host, port))
    with ctx.wrap_socket(raw, server_hostname=host) as tls:
        assert tls.selected_alpn_protocol() == alpn
        if alpn == "h2":
            conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
            conn.initiate_connection()
            conn.send_headers(
                1,
                [(":method", "GET"), (":scheme", "https"), (":authority", host),
                 (":path", "/api/v1/namespaces"), *forged],
                end_stream=True,
            )  # fmt: skip
            tls.sendall(conn.data_to_send())
            status = b""
            while not status:
                for event in conn.receive_data(tls.recv(65536)):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = dict(event.headers)[b":status"]
                tls.sendall(conn.data_to_send())
            assert status == b"401"  # no certificate believed, no token
        else:
            lines = ["GET /api/v1/namespaces HTTP/1.1", f"Host: {host}", "Connection: close"]
            lines += [f"{n}: {v}" for n, v in forged]
            tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            assert tls.recv(64).startswith(b"HTTP/1.1 401")
    wait_until(lambda: any(probe in json.dumps(e) for e in world.standin.audit_events()), 5, "")
    (event,) = [e for e in world.standin.audit_events() if probe in json.dumps(e)]
    assert event["sourceIPs"] == ["127.0.0.1"]
    assert not any(n.lower().startswith("x-standin-front") for n, _ in event["requestHeaders"])


def test_head_and_get_follow_each_other_on_one_connection(world: World) -> None:
    """HEAD and GET, one after another on one keep-alive connection to the gateway (so on
    one tunnel stream): each is answered at once and reaches the API server once, and
    every HEAD's HTTP/2 stream ends with its head (as Go's server ends it) instead of
    staying open on the API server."""
    _, api = world.user("h2-header", role="read-only")
    context = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", world.gateway.port, context=context, timeout=10)
    path = f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces/default"
    auth = {"Authorization": f"Bearer {api.token}", "User-Agent": "h2-head-then-get"}
    active = h2_stats(world)["active"]
    methods = ["HEAD", "GET", "HEAD", "HEAD", "GET", "GET", "HEAD"]
    try:
        for method in methods:
            conn.request(method, path, headers=auth)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, (method, resp.status, body)
            assert (body == b"") == (method == "HEAD"), method
            assert not resp.will_close, method
    finally:
        conn.close()
    seen = [
        str(e["verb"])
        for e in world.standin.audit_events()
        if e.get("userAgent") == "h2-head-then-get" and e.get("stage") == "ResponseComplete"
    ]
    assert len(seen) == len(methods), seen  # none refused and sent again
    wait_until(lambda: h2_stats(world)["active"] <= active, 5, f"{active} -> {h2_stats(world)}")

"""Metrics, the audit log, request ids and JSON logs, checked against what kubectl did.

kubectl runs with ``-v=6``, which logs every HTTP request it makes with its status; the
gateway's audit log must hold exactly one record per such request (right user, cluster,
verb, path and status, and no secret), ``herdgate_requests_total`` must have grown by
the same counts, and the API server must have seen the gateway's request id as its
audit id.
"""

from __future__ import annotations

import base64
import collections
import http.client
import json
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.binaries import kubectl
from tests.integration.conftest import World, start_world, stop_world
from tests.integration.env import free_port, kubectl_run
from tests.integration.test_proxy_errors import raw_request

pytestmark = pytest.mark.integration

SECRET_VALUE = "hunter2-do-not-log-me"
_REQUEST_LINE = re.compile(
    r'verb="(?P<v1>[A-Z]+)" url="(?P<u1>[^"]+)" status="(?P<s1>\d{3})'
    r"|\] (?P<v2>GET|POST|PUT|PATCH|DELETE) (?P<u2>https://\S+) (?P<s2>\d{3})"
)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, int]]:
    tmp = tmp_path_factory.mktemp("observed")
    port = free_port()
    config = f"audit:\n  level: request\nmetrics:\n  listen: 127.0.0.1:{port}\n"
    world = start_world(tmp, gateway_config=config)
    try:
        yield world, port
    finally:
        stop_world(world)


def _scrape(port: int) -> dict[tuple[str, str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    counts: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("herdgate_requests_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            counts[(labels["cluster"], labels["verb"], labels["code"])] = float(line.split()[-1])
    return counts


def _audit(world: World) -> list[dict[str, object]]:
    path = world.gateway.state_dir / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _kubectl_requests(stderr: str, prefix: str) -> list[tuple[str, str, int]]:
    out = []
    for match in _REQUEST_LINE.finditer(stderr):
        verb = match["v1"] or match["v2"]
        url = match["u1"] or match["u2"]
        status = int(match["s1"] or match["s2"])
        _, _, rest = url.partition(prefix)
        if rest:
            out.append((verb, rest, status))
    return out


def test_audit_and_metrics_match_what_kubectl_did(observed: tuple[World, int]) -> None:
    world, port = observed
    user_id, api = world.user("observed-user", role="cluster-owner")
    kc = world.kubeconfig_for(api, "observed")
    kubeconfig_token = re.search(r"token: (\S+)", kc.read_text())
    assert kubeconfig_token is not None
    prefix = f"/k8s/clusters/{world.cluster_id}"
    before = _scrape(port)
    audit_before = len(_audit(world))

    binary = kubectl("1.32")
    made: list[tuple[str, str, int]] = []
    for args in (
        ["get", "configmaps"],
        ["get", "configmap", "no-such-map"],
        ["create", "configmap", "audited", "--from-literal=colour=blue"],
        ["create", "secret", "generic", "kept", f"--from-literal=password={SECRET_VALUE}"],
        ["auth", "whoami"],
        ["delete", "configmap", "audited"],
    ):
        out = kubectl_run(binary, kc, "-v=6", *args)
        made += _kubectl_requests(out.stderr, prefix)
    assert len(made) >= 6, made
    missing = "/api/v1/namespaces/default/configmaps/no-such-map"
    assert any(m[0] == "GET" and m[1].startswith(missing) and m[2] == 404 for m in made), made

    # One audit record per request kubectl made, in the same order, with the same facts.
    time.sleep(0.5)  # the audit log is flushed every 0.2 s
    records = [
        r
        for r in _audit(world)[audit_before:]
        if r.get("user") == user_id and r["kind"] != "management"  # its kubeconfig's creation
    ]
    assert [(r["method"], r["path"], r["status"]) for r in records] == made
    for record in records:
        assert record["kind"] == "request"
        assert record["cluster"] == world.cluster_id
        assert record["principal"] == f"local://{user_id}"
        assert record["role"] == "cluster-owner"
        assert record["sourceIP"] == "127.0.0.1"
        assert str(record["userAgent"]).startswith("kubectl")
        assert isinstance(record["durationMs"], float)
    posts = {str(r["path"]).partition("?")[0]: r for r in records if r["method"] == "POST"}
    created = posts["/api/v1/namespaces/default/configmaps"]
    assert created["verb"] == "create" and created["resource"] == "configmaps"
    body = created["requestObject"]
    assert isinstance(body, dict) and body["kind"] == "ConfigMap", body
    # kubectl 1.32 sends protobuf: the record names the kind and keeps the object encoded.
    if "protobuf" in body:
        assert b"colour" in base64.b64decode(body["protobuf"])
    else:
        assert body["data"] == {"colour": "blue"}
    secret = posts["/api/v1/namespaces/default/secrets"]
    assert secret["requestObjectOmitted"] == "secret kind"
    assert "requestObject" not in secret

    # No credential or secret anywhere in the file.
    text = (world.gateway.state_dir / "audit.log").read_text()
    for needle in (
        kubeconfig_token[1],
        kubeconfig_token[1].split(":")[-1],
        api.token.split(":")[-1],
        SECRET_VALUE,
        base64.b64encode(SECRET_VALUE.encode()).decode(),
    ):
        assert needle not in text

    # The counters grew by exactly the requests made, by verb and code.
    after = _scrape(port)
    expected = collections.Counter(
        (world.cluster_id, str(r["verb"]), str(r["status"])) for r in records
    )
    for key, count in expected.items():
        assert after.get(key, 0) - before.get(key, 0) == count, key

    # Tunnels, bytes and logins are counted too.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert f'herdgate_tunnels_open{{cluster="{world.cluster_id}"}} 1.0' in text
    sent = re.search(r'herdgate_tunnel_bytes_total\{direction="sent"\} (\S+)', text)
    assert sent is not None and float(sent[1]) > 0
    logins = re.search(r'herdgate_logins_total\{provider="local",result="success"\} (\S+)', text)
    assert logins is not None and float(logins[1]) >= 2  # the admin and this user

    # The API server saw the gateway's request id as its audit id.
    seen = {e["auditID"] for e in world.standin.audit_events()}
    assert {r["requestId"] for r in records} <= seen


def test_request_ids_health_and_metrics_access(observed: tuple[World, int]) -> None:
    world, port = observed
    _, api = world.user("plain-user", role="cluster-member")
    status, _ = raw_request(world, "GET", f"/k8s/clusters/{world.cluster_id}/api", api.token)
    assert status == 200
    # Every answer names its request; a client cannot choose the id.
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", world.gateway.port, context=ctx, timeout=10)
    conn.request(
        "GET",
        f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces/default/configmaps",
        headers={"Authorization": f"Bearer {api.token}", "X-Request-Id": "forged", "Audit-ID": "x"},
    )
    resp = conn.getresponse()
    resp.read()
    rid = resp.getheader("X-Request-Id")
    assert resp.status == 200 and rid and rid != "forged"
    assert resp.getheader("Audit-Id") == rid  # the API server echoed the gateway's id
    conn.request("GET", "/v3/users?me=true", headers={"Authorization": f"Bearer {api.token}"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200 and resp.getheader("X-Request-Id")
    conn.close()

    # /healthz and /readyz on both listeners; /metrics for admins only on HTTPS.
    for base in (world.gateway.url, f"http://127.0.0.1:{port}"):
        for path in ("/healthz", "/readyz"):
            request = urllib.request.Request(base + path)
            with urllib.request.urlopen(request, context=ctx if "https" in base else None) as r:
                assert r.status == 200
    for token, expected in ((world.admin.token, 200), (api.token, 403), ("", 401)):
        request = urllib.request.Request(world.gateway.url + "/metrics")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, context=ctx) as r:
                code = r.status
                assert b"herdgate_requests_total" in r.read()
        except urllib.error.HTTPError as exc:
            code = exc.code
        assert code == expected

    # Logs are JSON lines; those written while serving a request carry its id.
    lines = [line for line in world.gateway.log().splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]
    assert entries and all({"time", "level", "logger", "message"} <= e.keys() for e in entries)
    assert any("request_id" in e for e in entries)


def test_exec_session_is_audited_with_bytes(observed: tuple[World, int]) -> None:
    world, _ = observed
    user_id, api = world.user("exec-user", role="cluster-owner")
    kc = world.kubeconfig_for(api, "exec")
    made = kubectl_run(kubectl("1.32"), kc, "run", "demo", "--image=busybox", "--restart=Never")
    assert made.returncode == 0, made.stderr
    out = kubectl_run(kubectl("1.32"), kc, "exec", "demo", "--", "echo", "hello-audit")
    assert out.returncode == 0, out.stderr
    time.sleep(0.5)
    sessions = [r for r in _audit(world) if r.get("user") == user_id and r["kind"] == "session"]
    assert [s["stage"] for s in sessions] == ["started", "ended"], sessions
    ended = sessions[1]
    assert ended["verb"] == "connect" and ended["resource"] == "pods/exec"
    assert ended["name"] == "demo" and ended["namespace"] == "default"
    assert int(ended["bytesToClient"]) > len("hello-audit")  # type: ignore[call-overload]
    assert ended["start"] <= ended["end"]  # type: ignore[operator]
    assert Path(world.gateway.state_dir / "audit.log").stat().st_mode & 0o777 == 0o600


def test_head_and_keep_alive_framing(observed: tuple[World, int]) -> None:
    """HEAD, 404 and 200 answers on one keep-alive connection: each is framed exactly."""
    world, _ = observed
    _, api = world.user("framing-user", role="cluster-owner")
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", world.gateway.port, context=ctx, timeout=10)
    auth = {"Authorization": f"Bearer {api.token}"}
    base = f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces/default/configmaps"
    conn.request("GET", base, headers=auth)
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200 and int(resp.getheader("Content-Length", "-1")) == len(body)
    conn.request("HEAD", base, headers=auth)
    resp = conn.getresponse()
    assert resp.status in (200, 405) and resp.read() == b""
    conn.request("GET", base + "/no-such-map", headers=auth)
    resp = conn.getresponse()
    assert resp.status == 404 and json.loads(resp.read())["kind"] == "Status"
    conn.request("GET", base, headers=auth)
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["kind"] == "ConfigMapList"
    assert resp.getheader("Date") and resp.getheader("X-Request-Id")
    conn.close()

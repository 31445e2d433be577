"""Real kubectl through gateway, tunnel and agent to the stand-in API server."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.binaries import kubectl
from tests.integration.conftest import World
from tests.integration.env import (
    free_port,
    kubectl_background,
    kubectl_run,
    rss_kib,
    wait_until,
)
from tests.integration.test_agent_h2 import h2_stats, standin_connections

pytestmark = [pytest.mark.integration, pytest.mark.request_path]

# 1.32: WebSocket exec and port-forward; 1.27: SPDY/3.1 for both.
VERSIONS = ["1.32", "1.27"]


@pytest.fixture(scope="module")
def alice(world: World) -> tuple[str, Path]:
    user_id, api = world.user("alice", role="cluster-member")
    return user_id, world.kubeconfig_for(api, "alice")


@pytest.fixture(scope="module")
def admin_kubeconfig(world: World) -> Path:
    return world.kubeconfig_for(world.admin, "admin")


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_dispatcher_kubectl_on_path_works(world: World, alice: tuple[str, Path]) -> None:
    user_id, kc = alice
    out = ok(kubectl_run(kubectl(), kc, "auth", "whoami", "-o", "json"))
    assert json.loads(out)["status"]["userInfo"]["username"] == user_id


@pytest.mark.parametrize("version", VERSIONS)
def test_whoami_shows_impersonated_identity(
    world: World, alice: tuple[str, Path], version: str
) -> None:
    user_id, kc = alice
    out = ok(kubectl_run(kubectl(version), kc, "auth", "whoami", "-o", "json"))
    info = json.loads(out)["status"]["userInfo"]
    assert info["username"] == user_id
    assert set(info["groups"]) == {"herdgate:cluster-member", "system:authenticated"}
    assert info["extra"] == {"username": ["alice"], "principalid": [f"local://{user_id}"]}
    # The API server saw the agent's service account impersonating alice, never her token.
    seen = [
        e for e in world.standin.audit_events()
        if (e.get("impersonatedUser") or {}).get("username") == user_id
    ]  # fmt: skip
    assert seen and all(e["user"]["username"].endswith(":herdgate-agent") for e in seen)


@pytest.mark.parametrize("version", VERSIONS)
def test_configmap_and_pod_lifecycle(world: World, alice: tuple[str, Path], version: str) -> None:
    _, kc = alice
    k = kubectl(version)
    name = f"cm-{version.replace('.', '-')}"
    ok(kubectl_run(k, kc, "create", "configmap", name, "--from-literal=k=v"))
    out = ok(kubectl_run(k, kc, "get", "configmap", name, "-o", "json"))
    assert json.loads(out)["data"] == {"k": "v"}
    ok(kubectl_run(k, kc, "delete", "configmap", name))
    missing = kubectl_run(k, kc, "get", "configmap", name)
    assert missing.returncode != 0 and "NotFound" in missing.stderr

    pod = f"pod-{version.replace('.', '-')}"
    manifest = (
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}}}\n"
        "spec: {containers: [{name: app, image: busybox}]}\n"
    )
    ok(kubectl_run(k, kc, "apply", "-f", "-", stdin=manifest))
    assert pod in ok(kubectl_run(k, kc, "get", "pods"))
    ok(kubectl_run(k, kc, "delete", "pod", pod, "--wait=false"))


@pytest.mark.parametrize("version", VERSIONS)
def test_watch_delivers_events_live(world: World, alice: tuple[str, Path], version: str) -> None:
    _, kc = alice
    k = kubectl(version)
    with kubectl_background(
        k, kc, "get", "configmaps", "-w", "-o", "name", home_name=f"home-watch-{version}"
    ) as watcher:
        time.sleep(1.0)
        name = f"watched-{version.replace('.', '-')}"
        created_at = time.monotonic()
        ok(kubectl_run(k, kc, "create", "configmap", name))
        assert watcher.stdout is not None
        line = ""
        while f"configmap/{name}" not in line:
            line = watcher.stdout.readline()
            assert line, watcher.stderr.read() if watcher.stderr else "watch ended"
        assert time.monotonic() - created_at < 5


@pytest.mark.parametrize("version", VERSIONS)
def test_logs_follow_streams(world: World, alice: tuple[str, Path], version: str) -> None:
    _, kc = alice
    k = kubectl(version)
    pod = f"logger-{version.replace('.', '-')}"
    ok(kubectl_run(k, kc, "run", pod, "--image=busybox", "--restart=Never"))
    with kubectl_background(k, kc, "logs", "-f", pod, home_name=f"home-logs-{version}") as proc:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(8)]
        # Follow mode keeps producing lines after the initial ones, one by one.
        assert all(lines), proc.stderr.read() if proc.stderr else ""
        assert len(set(lines)) == 8


@pytest.fixture(scope="module")
def exec_pod(world: World, alice: tuple[str, Path]) -> str:
    _, kc = alice
    ok(kubectl_run(kubectl("1.32"), kc, "run", "shell", "--image=busybox", "--restart=Never"))
    return "shell"


@pytest.mark.parametrize("version", VERSIONS)
def test_exec(world: World, alice: tuple[str, Path], exec_pod: str, version: str) -> None:
    _, kc = alice
    k = kubectl(version)
    assert ok(kubectl_run(k, kc, "exec", exec_pod, "--", "echo", "hello", "world")) == (
        "hello world\n"
    )
    payload = "".join(f"line {i}\n" for i in range(2000))
    assert ok(kubectl_run(k, kc, "exec", "-i", exec_pod, "--", "cat", stdin=payload)) == payload
    failed = kubectl_run(k, kc, "exec", exec_pod, "--", "sh", "-c", "exit 3")
    assert failed.returncode == 3


CP_BYTES = 48 * 1024 * 1024


@pytest.mark.parametrize("version", VERSIONS)
def test_cp_both_ways(
    world: World, alice: tuple[str, Path], exec_pod: str, version: str, tmp_path: Path
) -> None:
    """``kubectl cp`` up and down (exec of the pod's real ``tar``, SPDY with 1.27, WebSocket
    with 1.32) through gateway, tunnel and agent: the file comes back intact."""
    _, kc = alice
    k = kubectl(version)
    local = tmp_path / "up.bin"
    local.write_bytes(os.urandom(CP_BYTES))
    remote = f"/tmp/cp-{version}.bin"
    ok(kubectl_run(k, kc, "cp", str(local), f"{exec_pod}:{remote}", timeout=120))
    ok(kubectl_run(k, kc, "exec", exec_pod, "--", "test", "-f", remote))
    back = tmp_path / "down.bin"
    out = ok(kubectl_run(k, kc, "cp", f"{exec_pod}:{remote}", str(back), timeout=120))
    assert out == "tar: Removing leading `/' from member names\n"  # the pod's tar, on stderr
    assert back.stat().st_size == CP_BYTES
    assert _sha256(back) == _sha256(local)
    # into a directory: kubectl asks `test -d` first, then extracts under the file's name
    ok(kubectl_run(k, kc, "cp", str(local), f"{exec_pod}:/root", timeout=120))
    ok(kubectl_run(k, kc, "exec", exec_pod, "--", "test", "-f", "/root/up.bin"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _http_get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize("version", VERSIONS)
def test_port_forward(world: World, alice: tuple[str, Path], exec_pod: str, version: str) -> None:
    _, kc = alice
    port = free_port()
    with kubectl_background(
        kubectl(version), kc, "port-forward", f"pod/{exec_pod}", f"{port}:80",
        home_name=f"home-pf-{version}",
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        assert "Forwarding from" in proc.stdout.readline()
        for _ in range(3):  # several connections over one port-forward session
            assert b"hello from shell port 80" in _http_get(port)


def test_gateway_reports_cluster_active_with_agent(world: World) -> None:
    cluster = world.cluster()
    assert cluster["state"] == "active"
    assert cluster["agents"]


def test_large_list_streams_through(world: World, admin_kubeconfig: Path) -> None:
    """A multi-megabyte LIST passes intact (streamed chunk by chunk, not buffered whole)."""
    k = kubectl("1.32")
    blob = "x" * 500_000
    for i in range(8):
        manifest = json.dumps(
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": f"big-{i}", "namespace": "kube-public"}, "data": {"blob": blob}}
        )  # fmt: skip
        ok(kubectl_run(k, admin_kubeconfig, "apply", "-f", "-", stdin=manifest))
    out = ok(kubectl_run(k, admin_kubeconfig, "get", "cm", "-n", "kube-public", "-o", "json"))
    items = [i for i in json.loads(out)["items"] if i["metadata"]["name"].startswith("big-")]
    assert len(items) == 8 and all(i["data"]["blob"] == blob for i in items)


def test_healthz_is_public(world: World) -> None:
    import ssl

    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    with urllib.request.urlopen(world.gateway.url + "/healthz", context=ctx, timeout=5) as r:
        assert r.read() == b"ok"
    wait_until(lambda: True, 0.1, "")


def test_100mb_list_passes_in_bounded_memory(world: World, admin_kubeconfig: Path) -> None:
    """100 MB LIST through gateway and tunnel: intact, and the gateway does not hold it."""
    assert world.gateway.process is not None
    pid = world.gateway.process.pid
    before = rss_kib(pid)
    peak = before
    out = world.tmp / "bulk.json"
    with out.open("wb") as sink, subprocess.Popen(
        # `get --raw` drops the kubeconfig server's path, so the path names the cluster.
        [kubectl("1.32"), "--kubeconfig", str(admin_kubeconfig), "get", "--raw",
         f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces/herdgate-bulk/configmaps"],
        stdout=sink, stderr=subprocess.PIPE,
    ) as proc:  # fmt: skip
        while proc.poll() is None:
            peak = max(peak, rss_kib(pid))
            time.sleep(0.02)
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    size = out.stat().st_size
    assert size > 95_000_000
    doc = json.loads(out.read_bytes())
    assert len(doc["items"]) == size // (64 * 1024 + 200) or len(doc["items"]) > 1400
    growth_mib = (peak - before) / 1024
    assert growth_mib < 32, f"gateway RSS grew {growth_mib:.1f} MiB while streaming 100 MB"


def test_large_request_body_is_streamed_up(world: World, admin_kubeconfig: Path) -> None:
    """A request body above the buffering limit goes up in pieces, intact."""
    blob = "y" * 1_500_000
    manifest = json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "big-upload", "namespace": "default"}, "data": {"blob": blob}}
    )  # fmt: skip
    k = kubectl("1.32")
    ok(kubectl_run(k, admin_kubeconfig, "create", "-f", "-", stdin=manifest))
    out = ok(kubectl_run(k, admin_kubeconfig, "get", "cm", "big-upload", "-o", "json"))
    assert json.loads(out)["data"]["blob"] == blob
    ok(kubectl_run(k, admin_kubeconfig, "delete", "cm", "big-upload"))


def test_lists_go_byte_for_byte_and_watches_over_http2(
    world: World, alice: tuple[str, Path]
) -> None:
    """The agent's default split (``apiserver_http2`` on, ``apiserver_http2_all`` off):
    short requests go on kept-alive HTTP/1.1 connections to the API server, relayed byte
    for byte, and a watch (after its list, as kubectl and informers do it) goes as an
    HTTP/2 stream, the gateway keeping the two kinds of tunnel stream apart."""
    _, kc = alice
    k = kubectl("1.32")
    before = h2_stats(world)
    lists = 20
    for _ in range(lists):
        ok(kubectl_run(k, kc, "get", "configmaps", "-o", "name"))
    after = h2_stats(world)
    # Only the agent's own reports (a probe now and then) add HTTP/2 streams meanwhile.
    assert after["streams"] - before["streams"] < lists // 2, (before, after)
    assert standin_connections(world) > after["open"], "no HTTP/1.1 connection to the API server"
    active = after["active"]
    with kubectl_background(
        k, kc, "get", "configmaps", "-w", "-o", "name", home_name="home-split-watch"
    ) as watcher:
        wait_until(lambda: h2_stats(world)["active"] > active, 10, f"{h2_stats(world)}")
        ok(kubectl_run(k, kc, "create", "configmap", "split-watched"))
        assert watcher.stdout is not None
        line = ""
        while "configmap/split-watched" not in line:
            line = watcher.stdout.readline()
            assert line, watcher.stderr.read() if watcher.stderr else "watch ended"
    ok(kubectl_run(k, kc, "delete", "configmap", "split-watched"))

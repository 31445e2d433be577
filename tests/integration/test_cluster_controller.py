"""The cluster controller end to end (issue 17): health, version and nodes in
``GET /v3/clusters/<id>``, and the node-agent fallback, with the real kubectl.

Every test runs twice (issue 20): with agents that report their cluster's state
(``reports``: the gateway neither probes nor watches the cluster) and with old agents
(``probes``: ``cluster_state: false``, the gateway probes and watches through the tunnel)."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.binaries import kubectl
from tests.integration.conftest import (
    AGENT_MODES,
    AGENT_SA_USER,
    World,
    agent_args_for,
    start_world,
    stop_world,
)
from tests.integration.env import kubectl_background, kubectl_run, wait_until


@pytest.fixture(scope="module", params=AGENT_MODES)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    # A low request rate: the start-up of the controller, the access and ACE syncs (about
    # 25 requests) must wait for the cluster's bucket (test_metrics_per_cluster).
    rate = "controller:\n  requests_per_second: 10\n  request_burst: 5\n"
    tmp = tmp_path_factory.mktemp(f"controller-{request.param}")
    w = start_world(tmp, gateway_config=rate, agent_args=agent_args_for(request.param, tmp))
    try:
        yield w
    finally:
        stop_world(w)


@pytest.fixture(scope="module")
def admin_kubeconfig(world: World) -> Path:
    return world.kubeconfig_for(world.admin, "admin")


def _condition(cluster: dict[str, Any], kind: str) -> dict[str, Any]:
    for condition in cluster["conditions"]:
        if condition["type"] == kind:
            return dict(condition)
    raise AssertionError(f"no {kind} condition in {cluster['conditions']}")


def _node(name: str, role: str, address: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {f"node-role.kubernetes.io/{role}": ""}},
            "status": {
                "addresses": [{"type": "InternalIP", "address": address}],
                "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "nodeInfo": {"kubeletVersion": "v1.32.1"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            },
        }
    )


def _node_names(world: World) -> list[str]:
    return [n["name"] for n in world.cluster()["nodes"]]


def _reports(world: World) -> bool:
    """Whether the world's agents report their cluster's state (else: old agents)."""
    return "--config" not in world.agent_args


PROBE_INTERVAL_S = 10.0
"""``controller.probe_interval``'s default (the agent probes at the interval it is given)."""


def _gateway_probes_and_watches(world: World) -> list[str]:
    """What the stand-in received of the gateway's own probes and watches: requests as
    the agent's service account, not impersonating (the gateway's controllers), not made
    by the agent itself (its reports' requests carry its user agent): ``/readyz``,
    ``/version``, lists and watches of nodes, watches of namespaces. (The access sync's
    pass lists namespaces and is not among them.)"""
    seen = []
    for event in world.standin.audit_events():
        uri = str(event.get("requestURI", ""))
        path = uri.partition("?")[0]
        agent_itself = str(event.get("userAgent", "")).startswith("herdgate-agent/")
        as_gateway = event["user"].get("username") == AGENT_SA_USER and not event.get(
            "impersonatedUser"
        )
        watched = path == "/api/v1/nodes" or (path == "/api/v1/namespaces" and "watch=" in uri)
        if as_gateway and not agent_itself and (path in ("/readyz", "/version") or watched):
            seen.append(f"{event['verb']} {uri} ({event.get('userAgent')})")
    return seen


def _agent_probes(world: World) -> list[str]:
    return [
        str(event["requestURI"])
        for event in world.standin.audit_events()
        if str(event.get("userAgent", "")).startswith("herdgate-agent/")
        and str(event.get("requestURI", "")).startswith("/readyz")
    ]


def test_reports_spare_the_gateway_every_probe_and_watch(world: World) -> None:
    """With reports the cluster shows Ready, its version and nodes while the gateway sent
    the API server no probe and no watch; with an old agent the gateway probes itself."""
    world.wait_state("active")
    wait_until(lambda: world.cluster()["version"], 15, "no version")
    wait_until(lambda: _node_names(world) == ["standin-node"], 15, f"{world.cluster()}")
    if not _reports(world):
        wait_until(lambda: _gateway_probes_and_watches(world), 15, "the gateway never probed")
        assert not _agent_probes(world)
        return
    time.sleep(PROBE_INTERVAL_S / 2)  # time enough for a probe loop, were one running
    assert _agent_probes(world), "the agent never probed its API server"
    assert _gateway_probes_and_watches(world) == []


def test_active_cluster_shows_conditions_version_and_agents(world: World) -> None:
    world.wait_state("active")
    cluster = world.cluster()
    assert _condition(cluster, "Connected")["status"] == "True"
    ready = _condition(cluster, "Ready")
    assert ready["status"] == "True" and ready["lastTransitionTime"]
    # the access sync reports its passes as Synced
    wait_until(
        lambda: _condition(world.cluster(), "Synced")["status"] == "True", 15, "never Synced"
    )
    assert _condition(world.cluster(), "Synced")["reason"] == "Synced"
    wait_until(lambda: world.cluster()["version"], 15, "no version")
    version = world.cluster()["version"]
    assert version["gitVersion"] == "v1.32.0" and version["major"] == "1"
    [agent] = world.cluster()["agents"]
    assert agent["role"] == "cluster" and agent["node"] == "" and agent["connectedSince"]
    assert agent["replica"] and agent["remote"].startswith("127.0.0.1")


def _metrics(world: World) -> str:
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    request = urllib.request.Request(world.gateway.url + "/metrics")
    request.add_header("Authorization", f"Bearer {world.admin.token}")
    with urllib.request.urlopen(request, context=ctx, timeout=10) as response:
        return str(response.read().decode())


def test_metrics_per_cluster(world: World) -> None:
    world.wait_state("active")
    cid = world.cluster_id
    wanted = (
        f'herdgate_cluster_state{{cluster="{cid}",state="active"}} 1.0',
        f'herdgate_cluster_state{{cluster="{cid}",state="unavailable"}} 0.0',
        f'herdgate_cluster_condition{{cluster="{cid}",condition="Ready"}} 1.0',
        f'herdgate_cluster_condition{{cluster="{cid}",condition="Synced"}} 1.0',
        f'herdgate_cluster_nodes{{cluster="{cid}"}} 1.0',
    )
    wait_until(
        lambda: all(line in _metrics(world) for line in wanted), 15, "cluster metrics missing"
    )
    probe = [
        line
        for line in _metrics(world).splitlines()
        if line.startswith(f'herdgate_cluster_probe_seconds{{cluster="{cid}"}}')
    ]
    if not _reports(world):  # (with reports the gateway does not probe: no latency of its own)
        assert probe and float(probe[0].rsplit(" ", 1)[1]) > 0
    if _reports(world):
        return  # few requests of its own at start-up: the bucket may never have been empty
    # The gateway's own requests to the cluster were held to its rate (5 at once, 10/s).
    throttled = [
        line
        for line in _metrics(world).splitlines()
        if line.startswith(f'herdgate_downstream_throttled_seconds_total{{cluster="{cid}"}}')
    ]
    assert throttled and float(throttled[0].rsplit(" ", 1)[1]) > 0, throttled


def test_nodes_the_api_server_reports_appear(world: World) -> None:
    created = kubectl_run(
        kubectl("1.32"),
        world.cluster_admin_kubeconfig(),
        "create",
        "-f",
        "-",
        stdin=_node("worker-7", "worker", "10.0.0.7"),
    )
    assert created.returncode == 0, created.stderr
    wait_until(lambda: "worker-7" in _node_names(world), 15, f"node never shown: {world.cluster()}")
    cluster = world.cluster()
    [node] = [n for n in cluster["nodes"] if n["name"] == "worker-7"]
    assert node["roles"] == ["worker"]
    assert node["addresses"] == [{"type": "InternalIP", "address": "10.0.0.7"}]
    assert node["kubeletVersion"] == "v1.32.1" and node["ready"] == "True"
    assert node["capacity"] == {"cpu": "4", "memory": "8Gi", "pods": "110"}
    assert cluster["nodeCount"] == len(cluster["nodes"])
    deleted = kubectl_run(
        kubectl("1.32"), world.cluster_admin_kubeconfig(), "delete", "node", "worker-7"
    )
    assert deleted.returncode == 0, deleted.stderr
    wait_until(lambda: "worker-7" not in _node_names(world), 15, "deleted node still shown")


def test_api_server_down_makes_the_cluster_unavailable_and_back(world: World) -> None:
    world.wait_state("active")
    connected_since = _condition(world.cluster(), "Connected")["lastTransitionTime"]
    world.standin.stop()
    stopped = time.monotonic()
    try:
        world.wait_state("unavailable", timeout=30)
        if _reports(world):  # the agent's next probe fails, its report follows at once
            took = time.monotonic() - stopped
            assert took < PROBE_INTERVAL_S + 8, f"Ready False only after {took:.1f} s"
        cluster = world.cluster()
        ready = _condition(cluster, "Ready")
        assert ready["status"] == "False" and ready["reason"] and ready["message"]
        # The agent's tunnel stays up: only the API server is gone.
        assert _condition(cluster, "Connected")["status"] == "True"
    finally:
        world.standin.restart()
    world.wait_state("active", timeout=30)
    cluster = world.cluster()
    assert _condition(cluster, "Ready")["status"] == "True"
    assert _condition(cluster, "Connected")["lastTransitionTime"] == connected_since
    # The restarted stand-in lost its objects: a node made now is seen (the watch
    # resumed or listed again after the API server came back).
    created = kubectl_run(
        kubectl("1.32"),
        world.cluster_admin_kubeconfig(),
        "create",
        "-f",
        "-",
        stdin=_node("cp-1", "control-plane", "10.0.0.1"),
    )
    assert created.returncode == 0, created.stderr
    wait_until(
        lambda: _node_names(world) == ["cp-1", "standin-node"],
        30,
        f"nodes: {world.cluster()['nodes']}",
    )
    # Its RBAC objects went too: a cluster that is Ready again gets an access pass at once
    # (not at the next periodic resync, minutes off), so the administrator is back.
    world.wait_admin_synced(timeout=15)


def _read_until(proc: subprocess.Popen[str], text: str) -> None:
    """Read the watch's lines (at most a few: a header, then the object) until ``text``."""
    assert proc.stdout is not None
    lines: list[str] = []
    for _ in range(3):
        line = proc.stdout.readline()
        lines.append(line)
        if text in line:
            return
    raise AssertionError(f"{text!r} not in the watch's first lines: {lines}")


def _api_connections(pid: int, port: int) -> int:
    """Established TCP connections of process ``pid`` to ``port`` on 127.0.0.1."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                    count += 1
    return count


def test_node_agent_takes_over_when_the_cluster_agent_dies(
    world: World, admin_kubeconfig: Path
) -> None:
    k = kubectl("1.32")
    world.wait_state("active")
    assert kubectl_run(k, admin_kubeconfig, "create", "configmap", "fallback").returncode == 0
    node_agent = world.start_agent("--node-name", "node-1", log_name="node-agent")
    try:
        wait_until(
            lambda: sorted(a["role"] for a in world.cluster()["agents"]) == ["cluster", "node"],
            15,
            f"node agent never listed: {world.cluster()['agents']}",
        )
        connected_since = _condition(world.cluster(), "Connected")["lastTransitionTime"]
        with kubectl_background(
            k, admin_kubeconfig, "get", "configmaps", "-w", home_name="home-fallback-w"
        ) as watch:
            _read_until(watch, "fallback")
            world.agent.kill()  # SIGKILL: the tunnel dies without a goodbye
            killed = time.monotonic()
            watch.wait(timeout=10)  # the watch ends: kubectl exits, no hang
            # Ended by a Kubernetes Status in the stream (an ERROR event: the tunnel
            # closed), not a broken connection kubectl would report as a transport error.
            stderr = watch.stderr.read() if watch.stderr is not None else ""
            assert watch.returncode == 0 or stderr.startswith("Error from server"), stderr
        result = kubectl_run(k, admin_kubeconfig, "get", "configmap", "fallback")
        took = time.monotonic() - killed
        assert result.returncode == 0, result.stderr
        assert took < 2.0, f"the first call after the kill took {took:.2f}s"
        wait_until(
            lambda: [a["role"] for a in world.cluster()["agents"]] == ["node"],
            5,
            f"dead agent still listed: {world.cluster()['agents']}",
        )
        cluster = world.cluster()
        assert cluster["state"] == "active"
        [agent] = cluster["agents"]
        assert agent["node"] == "node-1"
        connected = _condition(cluster, "Connected")
        assert connected["status"] == "True" and "node-1" in connected["message"]
        assert connected["lastTransitionTime"] == connected_since  # never went False
        # The cluster agent comes back: new requests go through it again.
        world.agent.start()
        wait_until(
            lambda: sorted(a["role"] for a in world.cluster()["agents"]) == ["cluster", "node"],
            15,
            "cluster agent never came back",
        )
        port = int(world.standin.url.rsplit(":", 1)[1])
        assert world.agent.process is not None and node_agent.process is not None
        cluster_pid, node_pid = world.agent.process.pid, node_agent.process.pid
        before = _api_connections(node_pid, port)
        with kubectl_background(
            k, admin_kubeconfig, "get", "configmaps", "-w", home_name="home-fallback-w2"
        ) as watch:
            _read_until(watch, "fallback")
            assert _api_connections(cluster_pid, port) >= 1
            assert _api_connections(node_pid, port) <= before
    finally:
        node_agent.stop()
        if world.agent.process is None:
            world.agent.start()

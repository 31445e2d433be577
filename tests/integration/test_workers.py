"""Two gateway workers on one port: the agent holds a tunnel to each, either serves any
request, and a revocation on one holds on the other's next request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from standin.harness import StandInProcess
from tests.binaries import kubectl
from tests.fixtures.notify import FakeSystemd, starts_with
from tests.integration.conftest import (
    AGENT_SA_GROUPS,
    AGENT_SA_TOKEN,
    AGENT_SA_USER,
    CLUSTER_ADMIN_TOKEN,
    NO_AGENT,
    World,
    agent_objects,
    start_side_by_side,
)
from tests.integration.env import Gateway, free_port, kubectl_run, wait_until
from tests.integration.test_proxy_errors import raw_request

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("workers")
    gateway = Gateway(
        tmp / "gateway", free_port(), tmp / "gateway.log", extra_args=["--workers", "2"]
    )
    standin = start_side_by_side(
        gateway,
        lambda: StandInProcess.start(
            tmp / "apiserver",
            tokens={
                AGENT_SA_TOKEN: (AGENT_SA_USER, "uid-agent", list(AGENT_SA_GROUPS)),
                CLUSTER_ADMIN_TOKEN: ("cluster-admin", "uid-admin", ["system:masters"]),
            },
            objects=agent_objects(),  # the manifest's rights for the agent; RBAC enforced
        ),
    )
    admin = gateway.admin()
    cluster = admin.post("/v3/clusters", {"name": "multi"})
    agent_kc = standin.kubeconfig(tmp / "agent-kubeconfig", token=AGENT_SA_TOKEN)
    world = World(tmp, standin, gateway, admin, cluster["id"], "multi", NO_AGENT, agent_kc)
    world.agent = world.start_agent()
    try:
        world.wait_admin_synced()
        yield world
    finally:
        world.agent.stop()
        gateway.stop()
        standin.stop()


def workers_of(world: World) -> list[int]:
    assert world.gateway.process is not None
    out = subprocess.run(
        ["pgrep", "-P", str(world.gateway.process.pid)], capture_output=True, text=True, check=False
    )
    return [int(p) for p in out.stdout.split()]


def test_agent_holds_a_tunnel_to_each_worker(two_workers: World) -> None:
    world = two_workers
    assert len(workers_of(world)) == 2
    wait_until(
        lambda: world.cluster()["replicas"] == {"live": 2, "withTunnel": 2},
        20,
        "the agent never reached both workers",
    )
    _, api = world.user("spread", role="cluster-member")
    for _ in range(30):  # new connections land on either worker
        assert (
            raw_request(world, "GET", f"/k8s/clusters/{world.cluster_id}/api", api.token)[0] == 200
        )


def test_revocation_holds_on_every_worker(two_workers: World) -> None:
    world = two_workers
    wait_until(lambda: world.cluster()["replicas"]["withTunnel"] == 2, 20, "not on both workers")
    _, api = world.user("revoked-everywhere", role="cluster-member")
    path = f"/k8s/clusters/{world.cluster_id}/api"
    for _ in range(10):
        assert raw_request(world, "GET", path, api.token)[0] == 200
    api.delete(f"/v3/tokens/{api.token.split(':')[0]}")
    for _ in range(30):
        assert raw_request(world, "GET", path, api.token)[0] == 401


def test_one_controller_and_one_status_for_both_workers(two_workers: World) -> None:
    """Issue 17: one worker holds the cluster's lease and runs its controller; a GET
    through either worker shows the status it stored."""
    world = two_workers
    wait_until(lambda: world.cluster()["replicas"]["withTunnel"] == 2, 30, "not on both workers")
    wait_until(
        lambda: world.cluster()["state"] == "active" and world.cluster()["version"],
        30,
        "never active with a version",
    )
    fields = ("state", "conditions", "version", "nodes", "agents", "controllerReplica")
    seen = set()
    for _ in range(20):  # new connections land on either worker
        api = world.gateway.api(world.admin.token)
        cluster = api.get(f"/v3/clusters/{world.cluster_id}")
        seen.add(json.dumps([cluster[f] for f in fields], sort_keys=True))
    assert len(seen) == 1
    holder = json.loads(seen.pop())[-1]  # replica ids are <host>-<pid>-<random>
    assert sum(f"-{pid}-" in holder for pid in workers_of(world)) == 1, holder
    runs = f"controller of cluster {world.cluster_id} runs here"
    stops = f"controller of cluster {world.cluster_id} stops here"
    log = world.gateway.log()
    assert log.count(runs) - log.count(stops) == 1


def test_a_dead_worker_is_replaced_and_service_continues(two_workers: World) -> None:
    world = two_workers
    kc = world.kubeconfig_for(world.admin, "workers-admin")
    victim = workers_of(world)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    failures = 0
    while time.monotonic() < deadline:
        out = kubectl_run(kubectl("1.32"), kc, "get", "configmaps")
        failures += out.returncode != 0
    assert failures <= 2  # at most requests caught mid-flight by the kill
    wait_until(
        lambda: len(workers_of(world)) == 2 and victim not in workers_of(world),
        10,
        "the supervisor did not restart the worker",
    )
    wait_until(
        lambda: world.cluster()["replicas"] == {"live": 2, "withTunnel": 2},
        30,
        "the agent did not reach the new worker",
    )


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            sample, _, value = line.rpartition(" ")
            got = sample[len(name) :].strip("{}")
            if sorted(got.split(",")) == sorted(want.split(",")) or (not want and not got):
                return float(value)
    return 0.0


def test_supervisor_speaks_for_its_workers(tmp_path: Path, systemd: FakeSystemd) -> None:
    """READY once both serve, RELOADING/READY around SIGHUP, one /metrics for both,
    a worker that stops answering its watchdog is replaced, STOPPING on SIGTERM."""
    standin = StandInProcess.start(
        tmp_path / "apiserver",
        tokens={
            AGENT_SA_TOKEN: (AGENT_SA_USER, "uid-agent", list(AGENT_SA_GROUPS)),
            CLUSTER_ADMIN_TOKEN: ("cluster-admin", "uid-admin", ["system:masters"]),
        },
        objects=agent_objects(),  # the manifest's rights for the agent; RBAC enforced
    )
    metrics_port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(f"metrics:\n  listen: 127.0.0.1:{metrics_port}\n")
    # The supervisor pings every 1.5 s, and its workers' own watchdog is as long: short
    # enough for the hung worker below, long enough that a loaded box's event-loop pauses
    # do not look like one (a 1 s watchdog replaced a busy worker mid-test).
    env = dict(systemd.env(), WATCHDOG_USEC="3000000")
    gateway = Gateway(
        tmp_path / "gateway",
        free_port(),
        tmp_path / "gateway.log",
        extra_args=["--workers", "2", "--config", str(config)],
        extra_env=env,
    )
    world: World | None = None
    try:
        gateway.start()
        systemd.wait_for(starts_with("READY=1"), 20, "READY=1 from the supervisor")
        assert sum(starts_with("READY=1")(m) for m in systemd.poll()) == 1
        admin = gateway.admin()
        cluster = admin.post("/v3/clusters", {"name": "counted"})
        kc = standin.kubeconfig(tmp_path / "agent-kubeconfig", token=AGENT_SA_TOKEN)
        world = World(tmp_path, standin, gateway, admin, cluster["id"], "c", NO_AGENT, kc)
        world.agent = world.start_agent()
        wait_until(
            lambda: world.cluster()["replicas"] == {"live": 2, "withTunnel": 2},
            30,
            "the agent never reached both workers",
        )
        world.wait_admin_synced()

        # Every scrape answers for both workers: 40 requests over new connections.
        url = f"http://127.0.0.1:{metrics_port}/metrics"

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return str(resp.read().decode())

        labels = {"cluster": cluster["id"], "verb": "get", "code": "200"}
        before = _metric(scrape(), "herdgate_requests_total", **labels)
        for _ in range(40):
            path = f"/k8s/clusters/{cluster['id']}/api/v1/namespaces/default"
            assert raw_request(world, "GET", path, admin.token)[0] == 200
        # The other worker adds its batched counts within a second; then they hold.
        wait_until(
            lambda: _metric(scrape(), "herdgate_requests_total", **labels) - before == 40,
            5,
            "the workers' counts did not add up to 40",
        )
        for _ in range(6):
            assert _metric(scrape(), "herdgate_requests_total", **labels) - before == 40

        # SIGHUP reaches both workers; READY again once both have reloaded.
        assert gateway.process is not None
        seen = len(systemd.poll())
        gateway.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: any(m.startswith("READY=1") for m in systemd.poll()[seen:]),
            15,
            f"no READY after the reload: {systemd.poll()[seen:]}",
        )
        after = [m for m in systemd.poll()[seen:] if m != "WATCHDOG=1"]
        assert after[0].startswith("RELOADING=1"), after
        wait_until(lambda: gateway.log().count("reloaded settings") >= 2, 10, "workers reload")

        # A worker whose event loop hangs is killed and replaced.
        victim = workers_of(world)[0]
        os.kill(victim, signal.SIGSTOP)
        wait_until(
            lambda: victim not in workers_of(world) and len(workers_of(world)) == 2,
            15,
            "the stuck worker was not replaced",
        )
        assert "stopped answering its watchdog" in gateway.log()

        world.agent.stop()
        gateway.stop()
        assert any(starts_with("STOPPING=1")(m) for m in systemd.poll())
    finally:
        if world is not None and world.agent is not None:
            world.agent.stop()  # (a failure above left it running)
        gateway.stop()
        standin.stop()

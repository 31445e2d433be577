"""Two gateway workers on one port: the agent holds a tunnel to each, either serves any
request, and a revocation on one holds on the other's next request."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.apiserver.harness import StandInProcess
from tests.binaries import kubectl
from tests.integration.conftest import AGENT_SA_TOKEN, AGENT_SA_USER, NO_AGENT, World
from tests.integration.env import Gateway, free_port, kubectl_run, wait_until
from tests.integration.test_proxy_errors import raw_request

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("workers")
    standin = StandInProcess.start(
        tmp / "apiserver", tokens={AGENT_SA_TOKEN: (AGENT_SA_USER, "uid-agent", ["system:masters"])}
    )
    gateway = Gateway(
        tmp / "gateway", free_port(), tmp / "gateway.log", extra_args=["--workers", "2"]
    )
    gateway.start()
    admin = gateway.admin()
    cluster = admin.post("/v3/clusters", {"name": "multi"})
    agent_kc = standin.kubeconfig(tmp / "agent-kubeconfig", token=AGENT_SA_TOKEN)
    world = World(tmp, standin, gateway, admin, cluster["id"], "multi", NO_AGENT, agent_kc)
    world.agent = world.start_agent()
    try:
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

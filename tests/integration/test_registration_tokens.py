"""Registration tokens end to end: a gateway with two workers, real agents, the stand-in
API server. Revoking or rotating a token disconnects the agents holding it from every
worker (through the store's change feed); an agent over the per-cluster cap gets a 429,
says why once and backs off; the agent already connected keeps serving."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from standin.harness import StandInProcess
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
from tests.integration.env import Agent, Gateway, agent_command, free_port, wait_until
from tests.integration.test_proxy_errors import raw_request

pytestmark = pytest.mark.integration

MAX_AGENTS = 1


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("registration")
    config = tmp / "gateway.yaml"
    config.write_text(f"registration:\n  max_agents_per_cluster: {MAX_AGENTS}\n")
    gateway = Gateway(
        tmp / "gateway",
        free_port(),
        tmp / "gateway.log",
        extra_args=["--workers", "2", "--config", str(config)],
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
    cluster = admin.post("/v3/clusters", {"name": "reg"})
    agent_kc = standin.kubeconfig(tmp / "agent-kubeconfig", token=AGENT_SA_TOKEN)
    w = World(tmp, standin, gateway, admin, cluster["id"], "reg", NO_AGENT, agent_kc)
    try:
        yield w
    finally:
        if w.agent is not NO_AGENT:
            w.agent.stop()
        gateway.stop()
        standin.stop()


def _log(agent: Agent) -> str:
    return agent.log_file.read_text(errors="replace") if agent.log_file.exists() else ""


def _start(world: World, name: str) -> tuple[Agent, dict[str, str]]:
    reg = world.admin.post("/v3/clusterregistrationtokens", {"clusterId": world.cluster_id})
    command = agent_command(reg["command"], world.agent_kubeconfig)
    return Agent(command, world.tmp / f"{name}.log").start(), reg


def _on_both_workers(agent: Agent) -> None:
    wait_until(lambda: "(replica" in _log(agent) and ", 2 of 2)" in _log(agent), 30,
               f"the agent never held a tunnel to both workers:\n{_log(agent)}")  # fmt: skip


def _closes(agent: Agent) -> int:
    return _log(agent).count("tunnel to replica")


def _served(world: World) -> int:
    return raw_request(world, "GET", f"/k8s/clusters/{world.cluster_id}/api", world.admin.token)[0]


def test_revoking_a_token_disconnects_its_agent_from_every_worker(world: World) -> None:
    agent, reg = _start(world, "revoked")
    world.agent = agent
    try:
        _on_both_workers(agent)
        assert _served(world) == 200
        before = _closes(agent)
        started = time.monotonic()
        world.admin.delete(f"/v3/clusterregistrationtokens/{reg['id']}")
        wait_until(lambda: _closes(agent) >= before + 2, 15,
                   f"not disconnected from both workers:\n{_log(agent)}")  # fmt: skip
        print(f"\nrevocation -> both tunnels closed: {time.monotonic() - started:.2f} s")
        # It is refused (and gives up: exit code 3): nothing serves the cluster any more.
        wait_until(lambda: "rejected the registration token" in _log(agent), 20, _log(agent))
        assert _served(world) == 503
    finally:
        agent.stop()
        world.agent = NO_AGENT


def test_rotating_a_token_keeps_the_old_one_for_its_grace_only(world: World) -> None:
    agent, reg = _start(world, "rotated")
    try:
        _on_both_workers(agent)
        before = _closes(agent)
        started = time.monotonic()
        new = world.admin.post(
            f"/v3/clusterregistrationtokens/{reg['id']}?action=rotate", {"previousValidFor": "2s"}
        )
        assert new["token"] != reg["token"]
        time.sleep(1)
        assert _closes(agent) == before  # within the grace it stays connected
        assert _served(world) == 200
        wait_until(lambda: _closes(agent) >= before + 2, 15, _log(agent))
        print(f"\nrotation with 2 s grace -> both tunnels closed: "
              f"{time.monotonic() - started:.2f} s")  # fmt: skip
    finally:
        agent.stop()
    # The new token's agent serves.
    successor = Agent(
        agent_command(new["command"], world.agent_kubeconfig), world.tmp / "successor.log"
    ).start()
    try:
        _on_both_workers(successor)
        assert _served(world) == 200
    finally:
        successor.stop()


def test_an_agent_over_the_cap_is_refused_and_says_why_once(world: World) -> None:
    first, _ = _start(world, "first")
    second: Agent | None = None
    try:
        _on_both_workers(first)
        second, _ = _start(world, "second")
        wait_until(lambda: "refused this agent" in _log(second), 20, _log(second))
        time.sleep(2)
        log = _log(second)
        assert log.count("refused this agent") == 1, log
        assert "max_agents_per_cluster" in log and "established" not in log, log
        assert _served(world) == 200  # the first one still serves
        assert "refused: 1 agents" in world.gateway.log()
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_expired_tokens_cannot_connect(world: World, tmp_path: Path) -> None:
    reg = world.admin.post(
        "/v3/clusterregistrationtokens", {"clusterId": world.cluster_id, "ttl": 1}
    )
    time.sleep(0.1)
    agent = Agent(agent_command(reg["command"], world.agent_kubeconfig), tmp_path / "a.log").start()
    try:
        wait_until(lambda: "rejected the registration token" in _log(agent), 20, _log(agent))
        assert "established" not in _log(agent)
    finally:
        agent.stop()

"""One running world per test module: stand-in API server, gateway, agent, users."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from standin.harness import StandInProcess
from tests.fixtures.notify import FakeSystemd, fake_systemd
from tests.integration.env import (
    Agent,
    Api,
    Gateway,
    agent_command,
    free_port,
    wait_until,
    write_kubeconfig,
)

AGENT_SA_TOKEN = "agent-service-account-token"
AGENT_SA_USER = "system:serviceaccount:herdgate-system:herdgate-agent"
USER_PASSWORD = "a-long-user-password"


NO_AGENT = cast(Agent, None)
"""Placeholder until the world's agent is started (it needs the world to be built)."""


@dataclass
class World:
    tmp: Path
    standin: StandInProcess
    gateway: Gateway
    admin: Api
    cluster_id: str
    cluster_name: str
    agent: Agent
    agent_kubeconfig: Path

    def user(self, name: str, role: str | None = None, admin: bool = False) -> tuple[str, Api]:
        """Create a user (optionally bound to the cluster); returns its id and an API client."""
        created = self.admin.post(
            "/v3/users", {"username": name, "password": USER_PASSWORD, "admin": admin}
        )
        if role:
            self.admin.post(
                "/v3/clusterroletemplatebindings",
                {"clusterId": self.cluster_id, "userId": created["id"], "roleTemplateId": role},
            )
        api = self.gateway.api()
        api.token = api.login(name, USER_PASSWORD)
        return str(created["id"]), api

    def kubeconfig_for(self, api: Api, name: str) -> Path:
        config = api.post(f"/v3/clusters/{self.cluster_id}?action=generateKubeconfig")["config"]
        return write_kubeconfig(self.tmp / f"kubeconfig-{name}", config)

    def registration_command(self) -> str:
        reg = self.admin.post("/v3/clusterregistrationtokens", {"clusterId": self.cluster_id})
        return str(reg["command"])

    def start_agent(self, *extra: str, log_name: str = "agent") -> Agent:
        command = agent_command(self.registration_command(), self.agent_kubeconfig, *extra)
        return Agent(command, self.tmp / f"{log_name}.log").start()

    def cluster(self) -> dict[str, object]:
        result: dict[str, object] = self.admin.get(f"/v3/clusters/{self.cluster_id}")
        return result

    def wait_state(self, state: str, timeout: float = 15.0) -> None:
        wait_until(
            lambda: self.cluster()["state"] == state,
            timeout,
            f"cluster never became {state}: {self.cluster()}",
        )


BULK_LIST_BYTES = 100 * 1000 * 1000


def start_world(
    tmp: Path,
    name: str = "dev",
    gateway_config: str = "",
    gateway_env: dict[str, str] | None = None,
    gateway_ca: Path | None = None,
    authorization_mode: str = "AlwaysAllow",
) -> World:
    """``gateway_ca``: the CA of a certificate given in ``gateway_config``;
    ``authorization_mode``: the stand-in's, ``RBAC`` for a world whose tests make the
    bindings they need downstream."""
    standin = StandInProcess.start(
        tmp / "apiserver",
        tokens={AGENT_SA_TOKEN: (AGENT_SA_USER, "uid-agent", ["system:masters"])},
        args=["--bulk-list-bytes", str(BULK_LIST_BYTES)],
        # herdgate's users reach it impersonated; until the access sync (issue 17) binds
        # their role groups downstream, the world's API server authorizes everything
        authorization_mode=authorization_mode,
    )
    gateway = Gateway(tmp / "gateway", free_port(), tmp / "gateway.log")
    gateway.extra_env.update(gateway_env or {})
    gateway.ca_path = gateway_ca
    if gateway_config:
        (tmp / "gateway.yaml").write_text(gateway_config)
        gateway.extra_args = ["--config", str(tmp / "gateway.yaml")]
    gateway.start()
    admin = gateway.admin()
    cluster = admin.post("/v3/clusters", {"name": name})
    agent_kubeconfig = standin.kubeconfig(tmp / "agent-kubeconfig", token=AGENT_SA_TOKEN)
    world = World(
        tmp,
        standin,
        gateway,
        admin,
        cluster["id"],
        name,
        NO_AGENT,
        agent_kubeconfig,
    )
    world.agent = world.start_agent()
    world.wait_state("active")
    return world


def stop_world(world: World) -> None:
    for stop in (world.agent.stop, world.gateway.stop, world.standin.stop):
        try:
            stop()
        except Exception as exc:  # noqa: BLE001 - keep stopping the others
            print(f"teardown: {exc}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = start_world(tmp_path_factory.mktemp("world"))
    try:
        yield w
    finally:
        stop_world(w)


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    """A stand-in for systemd's notify socket (pass ``systemd.env()`` to a process)."""
    with fake_systemd() as fake:
        yield fake

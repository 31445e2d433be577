"""The agent's rough edges, with real processes: what it says without cluster credentials,
what it does with a registration token the gateway refuses, how it logs a normal stop.

- Outside a pod without ``--kubeconfig``: one line saying what to do, before it contacts
  the gateway.
- A token the gateway says is invalid (wrong, revoked, expired, its cluster deleted):
  the refusal logged once with its reason, and the agent exits (code 3) with a line
  saying what to do, instead of retrying for ever (docs/design.md, "The agent's
  reconnects").
- SIGTERM, or the gateway's own graceful stop: INFO lines, no WARNING.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.env import (
    REPO_ROOT,
    Agent,
    Api,
    Gateway,
    agent_command,
    free_port,
    wait_until,
)
from tests.integration.output import error_lines

pytestmark = pytest.mark.integration

TOKEN_REFUSED_EXIT = 3


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("agent-edges")
    gw = Gateway(tmp / "gateway", free_port(), tmp / "gateway.log").start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def admin(gateway: Gateway) -> Api:
    return gateway.admin()


def _kubeconfig(directory: Path) -> Path:
    """Cluster credentials the agent loads; nothing here needs the API server itself."""
    path = directory / "agent-kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9', "
        "insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"
    )
    return path


def _registration(admin: Api, name: str) -> tuple[str, dict[str, Any]]:
    cluster = admin.post("/v3/clusters", {"name": name})
    return str(cluster["id"]), admin.post(
        "/v3/clusterregistrationtokens", {"clusterId": cluster["id"]}
    )


def _log(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def _loud(path: Path) -> list[str]:
    """WARNING and above, but the relay's: these agents' API server does not exist (the
    gateway's cluster controller may try it through the tunnel)."""
    return [
        r["message"]
        for r in _log(path)
        if r["level"] in ("warning", "error", "critical") and r["logger"] != "tunnel.relay"
    ]


def _agent_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HERDGATE_", "KUBERNETES_SERVICE_"))
    }


def test_outside_a_pod_without_a_kubeconfig_it_says_what_to_do() -> None:
    """Nothing listens at the gateway's address: the missing credentials are found first."""
    done = subprocess.run(
        [sys.executable, "-m", "herdgate", "agent", "--server", f"https://127.0.0.1:{free_port()}",
         "--token", "crt-abcde:secret", "--ca-checksum", "0" * 64],
        cwd=REPO_ROOT, env=_agent_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done
    (line,) = error_lines(done.stderr)
    assert line.startswith("herdgate agent: no cluster to serve: not running in a pod"), line
    assert "pass --kubeconfig FILE" in line and "kubectl apply -f" in line, line


def test_a_wrong_token_is_logged_once_and_the_agent_exits(gateway: Gateway, admin: Api) -> None:
    _, registration = _registration(admin, "wrong-token")
    token_id = registration["token"].partition(":")[0]
    command = agent_command(
        registration["nodeCommand"].replace(registration["token"], f"{token_id}:not-the-secret"),
        _kubeconfig(gateway.log_file.parent),
    )
    log = gateway.log_file.parent / "agent-wrong-token.log"
    with log.open("wb") as out:
        done = subprocess.run(
            command, cwd=REPO_ROOT, env=_agent_env(), stdout=out, stderr=subprocess.PIPE,
            text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == TOKEN_REFUSED_EXIT, (done.stderr, log.read_text())
    assert error_lines(done.stderr) == [
        "herdgate agent: the gateway rejected the registration token: invalid cluster "
        "registration token (unknown, revoked or expired, or its cluster was deleted); "
        "get a new one from the cluster's owner (POST /v3/clusterregistrationtokens) and "
        "start the agent with it"
    ]
    loud = _loud(log)
    refusals = [m for m in loud if "rejected the registration token" in m]
    # Once when it happens, once when the agent gives up; the tries between are quiet.
    assert len(refusals) == 2, loud
    assert "invalid cluster registration token; retrying in" in refusals[0]
    assert refusals[1].endswith("invalid cluster registration token; giving up")


def test_a_revoked_token_stops_its_agent(gateway: Gateway, admin: Api) -> None:
    _, registration = _registration(admin, "revoked-token")
    log = gateway.log_file.parent / "agent-revoked.log"
    agent = Agent(
        agent_command(registration["nodeCommand"], _kubeconfig(gateway.log_file.parent)), log
    ).start()
    try:
        wait_until(
            lambda: "established" in log.read_text(),
            30,
            f"the agent never connected:\n{log.read_text()}",
        )
        admin.delete(f"/v3/clusterregistrationtokens/{registration['id']}")
        assert agent.process is not None
        assert agent.process.wait(120) == TOKEN_REFUSED_EXIT, log.read_text()
    finally:
        agent.kill()
    assert "rejected the registration token" in log.read_text()


def test_stops_are_logged_as_information(gateway: Gateway, admin: Api, tmp_path: Path) -> None:
    """SIGTERM to the agent; and, for another agent, the gateway stopping gracefully
    (its own gateway: the module's keeps serving)."""
    _, registration = _registration(admin, "normal-stop")
    log = tmp_path / "agent.log"
    agent = Agent(agent_command(registration["nodeCommand"], _kubeconfig(tmp_path)), log).start()
    try:
        wait_until(lambda: "tunnel to" in log.read_text(), 30, f"no tunnel:\n{log.read_text()}")
        assert agent.process is not None
        agent.process.send_signal(signal.SIGTERM)
        assert agent.process.wait(30) == 0
    finally:
        agent.kill()
    assert _loud(log) == []
    assert any("agent stopping" in r["message"] and r["level"] == "info" for r in _log(log))

    own = Gateway(tmp_path / "gw2", free_port(), tmp_path / "gw2.log").start()
    other_log = tmp_path / "agent-2.log"
    try:
        cluster = own.admin().post("/v3/clusters", {"name": "graceful"})
        reg = own.admin().post("/v3/clusterregistrationtokens", {"clusterId": cluster["id"]})
        other = Agent(agent_command(reg["nodeCommand"], _kubeconfig(tmp_path)), other_log).start()
        try:
            wait_until(lambda: "tunnel to" in other_log.read_text(), 30, "no tunnel")
            own.stop()
            wait_until(
                lambda: "closed the tunnel" in other_log.read_text(),
                30,
                f"the agent never noticed:\n{other_log.read_text()}",
            )
        finally:
            other.stop()
    finally:
        own.stop()
    closed = [r for r in _log(other_log) if "closed the tunnel" in r["message"]]
    assert closed and all(r["level"] == "info" for r in closed), closed

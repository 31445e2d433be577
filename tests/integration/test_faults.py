"""Injected faults (issue 19): a fault-injecting TCP proxy (``tests.fixtures.faultproxy``)
between the agent and the gateway, and between the agent and the cluster's API server.

Every case: requests in flight end promptly with a clear 502/503 ``Status`` (or a watch
ends), nothing hangs, the gateway's descriptors come back, and the agent reconnects
once the path is back. The agent notices a silent gateway (black-holed: no FIN, no RST)
within its keepalive timeout. And ``kill -9`` of the gateway: agents back, state intact.

Timers are short here (tunnel PING after 1 s idle, silence tolerated 3 s; agent back-off
0.2-2 s) so that each case takes seconds; the bounds asserted are those timers plus
slack, the correctness bounds of the design, not performance figures.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from standin.harness import StandInProcess
from tests.binaries import kubectl
from tests.fixtures.faultproxy import FaultProxy
from tests.integration.conftest import (
    AGENT_SA_GROUPS,
    AGENT_SA_TOKEN,
    AGENT_SA_USER,
    CLUSTER_ADMIN_TOKEN,
    World,
    agent_objects,
    start_world,
    stop_world,
)
from tests.integration.env import Agent, agent_command, kubectl_run, wait_until

pytestmark = pytest.mark.integration

GATEWAY_TIMERS = "tunnel:\n  ping_interval: 1s\n  idle_timeout: 3s\n"
AGENT_SETTINGS = {
    "backoff_initial": "0.2s",
    "backoff_max": "2s",
    "reconnect_spread": "0.5s",
    "tunnel": {"ping_interval": "1s", "idle_timeout": "3s"},
}
IDLE_TIMEOUT_S = 3.0
TICK_SLACK_S = 3.0
"""The idle check runs every tick (at most 2 s) and the machine is shared."""


@dataclass
class Faulty:
    world: World
    to_gateway: FaultProxy
    to_api: FaultProxy
    token: str
    kubeconfig: Path

    def get(self, path: str, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
        """GET through the gateway as a cluster owner: (status, JSON body)."""
        url = f"{self.world.gateway.url}/k8s/clusters/{self.world.cluster_id}{path}"
        context = ssl.create_default_context(cafile=str(self.world.gateway.ca_file))
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            with exc:
                body = exc.read()
            try:
                return exc.code, json.loads(body)
            except ValueError:
                return exc.code, {"raw": body.decode(errors="replace")}

    def in_flight(self, path: str) -> tuple[threading.Thread, dict[str, Any]]:
        """Start a GET in a thread; its result lands in the returned dict."""
        result: dict[str, Any] = {}

        def run() -> None:
            started = time.monotonic()
            result["status"], result["body"] = self.get(path)
            result["took"] = time.monotonic() - started

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread, result

    def gateway_tasks(self) -> int:
        """The gateway's live asyncio tasks (``herdgate_event_loop_tasks``, an admin's
        scrape of /metrics)."""
        context = ssl.create_default_context(cafile=str(self.world.gateway.ca_file))
        request = urllib.request.Request(
            self.world.gateway.url + "/metrics",
            headers={"Authorization": f"Bearer {self.world.admin.token}"},
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as resp:
            text = resp.read().decode()
        for line in text.splitlines():
            if line.startswith("herdgate_event_loop_tasks"):
                return int(float(line.split()[-1]))
        raise AssertionError("no herdgate_event_loop_tasks in /metrics")

    def no_leak(self, fds: int, tasks: int) -> None:
        """Descriptors and tasks back to what they were before the fault (a little
        slack: a pooled connection, a scrape's own task)."""
        wait_until(lambda: self.gateway_fds() <= fds + 2, 10, "descriptors not given back")
        wait_until(
            lambda: self.gateway_tasks() <= tasks + 3,
            10,
            f"tasks not given back: {self.gateway_tasks()} after, {tasks} before",
        )

    def gateway_fds(self) -> int:
        process = self.world.gateway.process
        assert process is not None
        return len(os.listdir(f"/proc/{process.pid}/fd"))

    def wait_serving(self, timeout: float = 20.0) -> None:
        """Until a request through the gateway reaches the API server again."""
        wait_until(
            lambda: self.get("/api/v1/namespaces/default", timeout=5)[0] == 200,
            timeout,
            f"not served again; agent log:\n{self.world.agent.log_file.read_text()[-3000:]}",
            interval=0.2,
        )


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    tmp = tmp_path_factory.mktemp("faults")
    world = start_world(tmp, gateway_config=GATEWAY_TIMERS)
    to_gateway = FaultProxy(world.gateway.port).start()
    api_port = int(world.standin.url.rsplit(":", 1)[1])
    to_api = FaultProxy(api_port).start()
    try:
        # The agent again, through both proxies.
        world.agent.stop()
        kubeconfig = yaml.safe_load(world.agent_kubeconfig.read_text())
        kubeconfig["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{to_api.port}"
        proxied_kubeconfig = tmp / "agent-via-proxy.kubeconfig"
        proxied_kubeconfig.write_text(yaml.safe_dump(kubeconfig))
        settings = tmp / "agent-faults.yaml"
        settings.write_text(yaml.safe_dump(AGENT_SETTINGS))
        line = world.registration_command().replace(
            world.gateway.url, f"https://127.0.0.1:{to_gateway.port}"
        )
        world.agent = Agent(
            agent_command(line, proxied_kubeconfig, "--config", str(settings)),
            tmp / "agent-faults.log",
        ).start()
        _, owner = world.user("fault-owner", role="cluster-owner")
        faulty = Faulty(
            world, to_gateway, to_api, owner.token, world.kubeconfig_for(owner, "owner")
        )
        faulty.wait_serving()
        yield faulty
    finally:
        stop_world(world)
        to_gateway.stop()
        to_api.stop()


@pytest.fixture(autouse=True)
def healthy_path(faulty: Faulty) -> Iterator[None]:
    """Each case starts and ends with both paths passing and the cluster served."""
    faulty.to_gateway.passing()
    faulty.to_api.passing()
    faulty.wait_serving()
    yield
    faulty.to_gateway.passing()
    faulty.to_api.passing()
    faulty.wait_serving()


def _clear_failure(result: dict[str, Any]) -> None:
    assert result["status"] in (502, 503), result
    body = result["body"]
    assert body.get("kind") == "Status" and body.get("code") == result["status"], body
    assert body.get("message"), body


def test_reset_agent_to_gateway_ends_requests_in_flight_and_the_agent_comes_back(
    faulty: Faulty,
) -> None:
    fds, tasks = faulty.gateway_fds(), faulty.gateway_tasks()
    faulty.to_api.delay(4.0)  # the API server is slow: the request is in flight
    thread, result = faulty.in_flight("/api/v1/namespaces")
    time.sleep(1.0)
    reset_at = time.monotonic()
    assert faulty.to_gateway.reset() >= 1
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - reset_at < 2.5  # not the 4 s the API server would take
    _clear_failure(result)
    faulty.to_api.passing()
    faulty.wait_serving()
    faulty.no_leak(fds, tasks)


def test_a_silent_gateway_is_noticed_and_requests_in_flight_end(faulty: Faulty) -> None:
    """Black-holed: no FIN, no RST. The gateway's keepalive ends the tunnel (and the
    request in flight on it); the agent's ends it on its side and it dials again, in
    vain until the route is back."""
    agent_log = faulty.world.agent.log_file
    seen = len(agent_log.read_text())
    fds, tasks = faulty.gateway_fds(), faulty.gateway_tasks()
    faulty.to_api.delay(2.0)
    thread, result = faulty.in_flight("/api/v1/namespaces")
    time.sleep(0.5)
    holed_at = time.monotonic()
    faulty.to_gateway.blackhole()
    thread.join(IDLE_TIMEOUT_S + TICK_SLACK_S + 5)
    assert not thread.is_alive(), "a request hung on a black-holed tunnel"
    assert time.monotonic() - holed_at < IDLE_TIMEOUT_S + TICK_SLACK_S + 2
    _clear_failure(result)
    wait_until(
        lambda: "no data from peer" in agent_log.read_text()[seen:],
        IDLE_TIMEOUT_S + TICK_SLACK_S,
        "the agent did not notice the silent gateway",
        interval=0.2,
    )
    faulty.to_api.passing()
    faulty.to_gateway.passing()
    faulty.wait_serving(timeout=30)
    faulty.no_leak(fds, tasks)


def test_a_truncated_tunnel_fails_its_request_cleanly(faulty: Faulty) -> None:
    fds, tasks = faulty.gateway_fds(), faulty.gateway_tasks()
    faulty.to_api.delay(1.5)
    thread, result = faulty.in_flight("/api/v1/namespaces")
    time.sleep(0.3)
    faulty.to_gateway.truncate(7)  # mid-record: the TLS stream is cut
    thread.join(15)
    assert not thread.is_alive()
    _clear_failure(result)
    faulty.to_api.passing()
    faulty.wait_serving()
    faulty.no_leak(fds, tasks)


def test_a_dropped_tunnel_is_redialled(faulty: Faulty) -> None:
    assert faulty.to_gateway.drop() >= 1
    faulty.wait_serving()


def test_a_slow_path_is_slow_not_broken(faulty: Faulty) -> None:
    faulty.to_gateway.delay(0.2)
    started = time.monotonic()
    status, body = faulty.get("/api/v1/namespaces/default")
    assert status == 200, body
    assert time.monotonic() - started >= 0.2


def test_an_api_server_that_resets_gives_a_clear_error(faulty: Faulty) -> None:
    faulty.to_api.refuse()
    faulty.to_api.reset()  # the agent's pooled connections too
    status, body = faulty.get("/api/v1/namespaces/default", timeout=20)
    assert status in (502, 503), (status, body)
    assert body.get("kind") == "Status", body
    faulty.to_api.passing()
    faulty.wait_serving()


def test_a_watch_ends_cleanly_when_its_tunnel_is_reset(faulty: Faulty) -> None:
    watch = kubectl_run_background(faulty, "get", "configmaps", "-n", "default", "--watch")
    try:
        time.sleep(2.0)
        assert watch.poll() is None  # watching
        faulty.to_gateway.reset()
        watch.wait(10)  # ended: no hang
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(5)
    faulty.wait_serving()
    again = kubectl_run(kubectl(), faulty.kubeconfig, "get", "configmaps", "-n", "default")
    assert again.returncode == 0, again.stderr


def test_a_slow_api_server_does_not_hold_up_another_cluster(faulty: Faulty, tmp_path: Path) -> None:
    """Cluster A's API server takes seconds per answer; cluster B, through the same
    gateway, answers while A's requests are still waiting."""
    world = faulty.world
    other = world.admin.post("/v3/clusters", {"name": "other"})
    standin = StandInProcess.start(
        tmp_path / "apiserver",
        tokens={
            AGENT_SA_TOKEN: (AGENT_SA_USER, "uid-agent", list(AGENT_SA_GROUPS)),
            CLUSTER_ADMIN_TOKEN: ("cluster-admin", "uid-admin", ["system:masters"]),
        },
        objects=agent_objects(),
        authorization_mode="RBAC",
    )
    reg = world.admin.post("/v3/clusterregistrationtokens", {"clusterId": other["id"]})
    agent = Agent(
        agent_command(
            str(reg["command"]), standin.kubeconfig(tmp_path / "agent.kc", token=AGENT_SA_TOKEN)
        ),
        tmp_path / "agent-other.log",
    ).start()
    try:
        (owner,) = [
            u for u in world.admin.get("/v3/users")["data"] if u["username"] == "fault-owner"
        ]
        world.admin.post(
            "/v3/clusterroletemplatebindings",
            {"clusterId": other["id"], "userId": owner["id"], "roleTemplateId": "cluster-owner"},
        )

        def get_other() -> int:
            url = f"{world.gateway.url}/k8s/clusters/{other['id']}/api/v1/namespaces/default"
            context = ssl.create_default_context(cafile=str(world.gateway.ca_file))
            request = urllib.request.Request(
                url, headers={"Authorization": f"Bearer {faulty.token}"}
            )
            try:
                with urllib.request.urlopen(request, context=context, timeout=20) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as exc:
                with exc:
                    return int(exc.code)

        wait_until(lambda: get_other() == 200, 30, "cluster B never served", interval=0.3)
        faulty.to_api.delay(3.0)
        slow = [faulty.in_flight("/api/v1/namespaces/default") for _ in range(4)]
        time.sleep(0.3)
        assert [get_other() for _ in range(5)] == [200] * 5
        assert all(thread.is_alive() for thread, _ in slow), "A answered before B: not slow?"
        for thread, result in slow:
            thread.join(20)
            assert result["status"] == 200, result
    finally:
        agent.stop()
        standin.stop()
        world.admin.delete(f"/v3/clusters/{other['id']}")


def test_kill_9_of_the_gateway_keeps_state_and_agents_come_back(faulty: Faulty) -> None:
    world = faulty.world
    users = {u["id"] for u in world.admin.get("/v3/users")["data"]}
    process = world.gateway.process
    assert process is not None
    process.kill()
    process.wait(10)
    world.gateway.process = None
    world.gateway.start()
    started = time.monotonic()
    faulty.wait_serving(timeout=10)
    assert time.monotonic() - started <= 10
    admin = world.gateway.api(world.admin.token)
    assert {u["id"] for u in admin.get("/v3/users")["data"]} == users
    out = kubectl_run(kubectl(), faulty.kubeconfig, "auth", "whoami", "-o", "json")
    assert out.returncode == 0, out.stderr


def kubectl_run_background(faulty: Faulty, *args: str) -> Any:
    import subprocess

    from standin.harness import kubectl_env

    env = kubectl_env(faulty.world.tmp / "kubectl-home")
    return subprocess.Popen(
        [kubectl(), "--kubeconfig", str(faulty.kubeconfig), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

"""Injected faults (issue 19): a fault-injecting TCP proxy (``tests.fixtures.faultproxy``)
between the agent and the gateway, and between the agent and the cluster's API server.

Every case: requests in flight end promptly with a clear 502/503 ``Status`` (or a watch
ends), nothing hangs, the gateway's descriptors come back, and the agent reconnects
once the path is back. Then every kind again, repeated with requests in flight: the
gateway's and the agent's memory (RSS), descriptors and asyncio tasks are back within
stated bounds of their level after a warm-up (the bounds, and the noise they come from,
are at ``RSS_GROWTH_KIB`` and ``FDS_SLACK``). The agent notices a silent gateway
(black-holed: no FIN, no RST) within its keepalive timeout. And ``kill -9`` of the
gateway: agents back, state intact.

Timers are short here (tunnel PING after 1 s idle, silence tolerated 3 s; agent back-off
0.2-2 s) so that each case takes seconds; the bounds asserted are those timers plus
slack, the correctness bounds of the design, not performance figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.controllers.downstream import INTERNAL_KEEPALIVE_S
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
from tests.integration.env import (
    Agent,
    agent_command,
    descriptors,
    free_port,
    kubectl_run,
    rss_kib,
    wait_until,
)

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


@dataclass(frozen=True)
class Levels:
    """What a leak would grow: memory, descriptors and asyncio tasks of both ends."""

    gateway_rss_kib: int
    gateway_fds: int
    gateway_tasks: int
    agent_rss_kib: int
    agent_fds: int
    agent_tasks: int

    def minus(self, other: Levels) -> dict[str, int]:
        return {f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)}


@dataclass
class Faulty:
    world: World
    to_gateway: FaultProxy
    to_api: FaultProxy
    token: str
    kubeconfig: Path
    agent_metrics: str
    """The agent's ``/metrics`` (``health_listen``)."""

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

    def agent_metric(self, name: str) -> int:
        """One unlabelled sample of the agent's ``/metrics``."""
        with urllib.request.urlopen(self.agent_metrics, timeout=10) as resp:
            text = resp.read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[-1]))
        raise AssertionError(f"no {name} in the agent's /metrics")

    def levels(self) -> Levels:
        gateway, agent = self.world.gateway.process, self.world.agent.process
        assert gateway is not None and agent is not None
        return Levels(
            gateway_rss_kib=rss_kib(gateway.pid),
            gateway_fds=self.gateway_fds(),
            gateway_tasks=self.gateway_tasks(),
            agent_rss_kib=rss_kib(agent.pid),
            agent_fds=len(os.listdir(f"/proc/{agent.pid}/fd")),
            agent_tasks=self.agent_metric("herdgate_agent_event_loop_tasks"),
        )

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
        health = free_port()
        settings.write_text(
            yaml.safe_dump({**AGENT_SETTINGS, "health_listen": f"127.0.0.1:{health}"})
        )
        line = world.registration_command().replace(
            world.gateway.url, f"https://127.0.0.1:{to_gateway.port}"
        )
        world.agent = Agent(
            agent_command(line, proxied_kubeconfig, "--config", str(settings)),
            tmp / "agent-faults.log",
        ).start()
        _, owner = world.user("fault-owner", role="cluster-owner")
        faulty = Faulty(
            world,
            to_gateway,
            to_api,
            owner.token,
            world.kubeconfig_for(owner, "owner"),
            f"http://127.0.0.1:{health}/metrics",
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


FAULT_KINDS = ("reset", "drop", "truncate", "cut", "blackhole")
"""Every fault of the agent's path that ends its tunnel (a delay does not)."""
WARM_UP_ROUNDS = 1
"""Each kind once first: a code path's first use (an import, a cache, the allocator's
pools) is not a leak."""
ROUNDS = 1
"""Measured rounds after the warm-up: each kind a second time. One, for the suite's time
(a round takes about 12 s, the black hole 5 of them: the gateway's idle timeout); the
descriptor and task counts are exact, so one leaked per fault shows in one round, and
longer runs (8 rounds) are summed up under ``RSS_GROWTH_KIB``."""
IN_FLIGHT = 3
"""Requests in flight through the tunnel at each fault."""
FDS_SLACK = 1
TASKS_SLACK = 2
"""A request's relay on the agent (its task, the future it waits on, its connection to the
API server) or a pooled connection on the gateway can still be closing when the levels
are read. The warmed-up level is the least of three readings 0.3 s apart; the final one
is read again until an idle pooled connection must have been closed (below), and only a
reading that stays above the warmed-up level plus this fails. The final readings
measured were at the level, or the agent's at +1 descriptor and +2 tasks: one relay (its
task, its connection to the API server and the task waiting for the gateway's end of the
stream) still open."""
RSS_GROWTH_KIB = 2048
"""Per process, over the measured round (5 faults, 15 requests failed in flight).
Measured (pure Python, 2 cores shared, 2026-12-06), one round after the warm-up round:
+148 to +280 KiB (gateway) and +136 to +372 KiB (agent), six runs; over 8 rounds after 2
warm-up rounds, +756 KiB and +2.7 MiB, the agent's at most +730 KiB in one round and +0
in the last. That growth is not live Python objects: tracemalloc, started after the
warm-up, found 409 KiB (gateway) and 219 KiB (agent) still allocated after 5 rounds, 126
KiB of each in linecache's copy of the source files of logged tracebacks. In a run
without it (5 rounds: +720 and +1,728 KiB) glibc's ``malloc_trim(0)``, called through gdb
at the warm-up level and at the end, left +792 and +1,784 KiB between the trimmed
readings: memory kept in CPython's arenas (given back only when empty) or by native
allocators, not pinned down further. 2 MiB is 5.5 times the largest one-round growth
measured and 2.8 times the largest step of the long run; a leak of 400 KiB a fault (a
tunnel's or a stream's buffers kept) crosses it. Smaller leaks of memory alone are the
soak's to find (docs/benchmarks.md, "Soak"); a leaked connection, stream or task is
caught exactly by the descriptor and task counts."""


def _fault_round(faulty: Faulty, kind: str) -> None:
    """One fault on the agent's path with requests in flight: they end with a clear
    502/503, the path comes back, the agent reconnects and the cluster is served."""
    faulty.to_api.delay(3.0)  # the API server is slow: the requests stay in flight
    flights = [faulty.in_flight("/api/v1/namespaces") for _ in range(IN_FLIGHT)]
    time.sleep(0.4)  # on the tunnel, waiting for the API server
    if kind == "reset":
        faulty.to_gateway.reset()
    elif kind == "drop":
        faulty.to_gateway.drop()
    elif kind == "truncate":
        faulty.to_gateway.truncate(7)  # cut mid-record by the next PING
    elif kind == "cut":
        faulty.to_gateway.cut()
        time.sleep(0.5)  # the agent's redials are refused meanwhile
    else:
        faulty.to_gateway.blackhole()
    for thread, result in flights:
        thread.join(IDLE_TIMEOUT_S + TICK_SLACK_S + 5)
        assert not thread.is_alive(), f"a request hung after {kind}"
        _clear_failure(result)
    faulty.to_api.passing()
    faulty.to_gateway.passing()
    faulty.wait_serving(timeout=30)
    wait_until(
        lambda: faulty.agent_metric("herdgate_agent_tunnels") == 1,
        20,
        f"the agent holds no tunnel after {kind}",
        interval=0.2,
    )


def test_repeated_faults_leak_no_memory_descriptors_or_tasks(faulty: Faulty) -> None:
    """Each fault kind again and again between agent and gateway, with requests in
    flight: afterwards the gateway's and the agent's memory (RSS), open descriptors and
    asyncio tasks (``herdgate_event_loop_tasks``, ``herdgate_agent_event_loop_tasks``)
    are back within the bounds above of their level after the warm-up."""
    for _ in range(WARM_UP_ROUNDS):
        for kind in FAULT_KINDS:
            _fault_round(faulty, kind)
    gateway, agent = faulty.world.gateway.process, faulty.world.agent.process
    assert gateway is not None and agent is not None
    readings = []
    named: list[tuple[list[str], list[str]]] = []
    for _ in range(3):  # the least of each: a relay or a connection still closing is not
        time.sleep(0.3)
        readings.append(faulty.levels())
        named.append((descriptors(gateway.pid), descriptors(agent.pid)))
    warm = Levels(*(min(getattr(r, f.name) for r in readings) for f in fields(Levels)))
    warm_gateway = min((n[0] for n in named), key=len)
    warm_agent = min((n[1] for n in named), key=len)
    for _ in range(ROUNDS):
        for kind in FAULT_KINDS:
            _fault_round(faulty, kind)

    def settled() -> bool:
        now = faulty.levels()
        return (
            now.gateway_fds <= warm.gateway_fds + FDS_SLACK
            and now.agent_fds <= warm.agent_fds + FDS_SLACK
            and now.gateway_tasks <= warm.gateway_tasks + TASKS_SLACK
            and now.agent_tasks <= warm.agent_tasks + TASKS_SLACK
        )

    with contextlib.suppress(TimeoutError):  # the assertions below say what stayed up
        # An idle pooled connection pair on the gateway's internal socket (a probe's or
        # an access pass's, with its server's task) is closed by aiohttp's pool on a timer
        # that ticks every keep-alive period and closes what has been idle that long: up
        # to twice the keep-alive (rounded up to whole seconds) after its last use.
        wait_until(settled, 2 * INTERNAL_KEEPALIVE_S + 5, "", interval=0.5)
    after = faulty.levels()
    growth = after.minus(warm)
    print(f"\nwarmed up: {warm}\nafter {ROUNDS} round(s) of {FAULT_KINDS}: {growth}")
    new_gateway = sorted(set(descriptors(gateway.pid)) - set(warm_gateway))
    new_agent = sorted(set(descriptors(agent.pid)) - set(warm_agent))
    assert growth["gateway_fds"] <= FDS_SLACK, (growth, "gateway's new", new_gateway)
    assert growth["agent_fds"] <= FDS_SLACK, (growth, "agent's new", new_agent)
    assert growth["gateway_tasks"] <= TASKS_SLACK, growth
    assert growth["agent_tasks"] <= TASKS_SLACK, growth
    assert growth["gateway_rss_kib"] <= RSS_GROWTH_KIB, growth
    assert growth["agent_rss_kib"] <= RSS_GROWTH_KIB, growth


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

"""Two gateway replicas on a three-member etcd cluster, under etcd's failures: a token
revoked through replica A is refused by replica B within a second, also after etcd
compacted the history B's watch needed while B was cut off; a killed etcd member
interrupts nothing; with etcd stopped entirely tokens keep working, writes answer 503,
and everything resumes when etcd is back, without a restart.

Replica B reaches each etcd member through a fault-injecting proxy
(``tests.fixtures.faultproxy``) the test can cut (its watch and requests break, as on a
network partition), silence, slow down or truncate; replica A reaches the members directly.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from standin.harness import StandInProcess
from tests.binaries import kubectl
from tests.fixtures.etcd_secure import EtcdCluster, start_etcd_members
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.tcplb import TcpBalancer
from tests.integration.conftest import (
    AGENT_SA_GROUPS,
    AGENT_SA_TOKEN,
    AGENT_SA_USER,
    CLUSTER_ADMIN_TOKEN,
    NO_AGENT,
    USER_PASSWORD,
    World,
    agent_objects,
)
from tests.integration.env import (
    ApiError,
    Gateway,
    free_port,
    kubectl_run,
    wait_until,
)
from tests.integration.test_proxy_errors import raw_request

pytestmark = pytest.mark.integration

PREFIX = "/failures/"


def etcd_post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url}/v3/{path}", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def compact_now(etcd: EtcdCluster) -> int:
    """Compact etcd's whole history (what etcd's auto-compaction does hourly)."""
    url = next(m.url for m in etcd.members if m.running())
    revision = int(etcd_post(url, "kv/range", {"key": "Lw=="})["header"]["revision"])
    etcd_post(url, "kv/compaction", {"revision": str(revision), "physical": True})
    return revision


@pytest.fixture(scope="module")
def ha(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[World, Gateway, Gateway, EtcdCluster, list[FaultProxy]]]:
    tmp = tmp_path_factory.mktemp("etcd-failures")
    etcd = start_etcd_members(tmp / "etcd", 3)
    relays = [FaultProxy(m.client_port).start() for m in etcd.members]
    ports = [free_port(), free_port()]
    lb = TcpBalancer(ports).start()
    url = f"https://127.0.0.1:{lb.port}"

    def store(endpoints: list[str]) -> dict[str, Any]:
        return {
            "backend": "etcd",
            "etcd_endpoints": endpoints,
            "etcd_prefix": PREFIX,
            "etcd_request_timeout": "3s",
            "etcd_dial_timeout": "1s",
            "max_feed_lag": "8s",
        }

    first = Gateway(tmp / "a", ports[0], tmp / "a.log")
    (tmp / "a.yaml").write_text(yaml.safe_dump({"server_url": url, "store": store(etcd.urls)}))
    first.extra_args = ["--config", str(tmp / "a.yaml"), "--server-url", url]
    first.start()
    tls_dir = tmp / "a" / "tls"
    second = Gateway(tmp / "b", ports[1], tmp / "b.log", ca_path=tls_dir / "ca.crt")
    relayed = [f"http://127.0.0.1:{r.port}" for r in relays]
    (tmp / "b.yaml").write_text(yaml.safe_dump({
        "server_url": url, "store": store(relayed),
        "tls": {"cert_file": str(tls_dir / "server.crt"), "key_file": str(tls_dir / "server.key"),
                "ca_file": str(tls_dir / "ca.crt")},
    }))  # fmt: skip
    second.extra_args = ["--config", str(tmp / "b.yaml"), "--server-url", url]
    second.start()
    standin = StandInProcess.start(
        tmp / "apiserver",
        tokens={
            AGENT_SA_TOKEN: (AGENT_SA_USER, "u", list(AGENT_SA_GROUPS)),
            CLUSTER_ADMIN_TOKEN: ("cluster-admin", "uid-admin", ["system:masters"]),
        },
        objects=agent_objects(),
    )
    front = Gateway(tmp / "a", lb.port, tmp / "front.log")
    admin = front.admin()
    cluster = admin.post("/v3/clusters", {"name": "etcd-failures"})
    agent_kc = standin.kubeconfig(tmp / "agent-kubeconfig", token=AGENT_SA_TOKEN)
    world = World(tmp, standin, front, admin, cluster["id"], "etcd-failures", NO_AGENT, agent_kc)
    world.agent = world.start_agent()
    try:
        wait_until(
            lambda: world.cluster()["replicas"] == {"live": 2, "withTunnel": 2},
            30,
            "the agent did not reach both replicas",
        )
        yield world, first, second, etcd, relays
    finally:
        world.agent.stop()
        first.stop()
        second.stop()
        standin.stop()
        lb.stop()
        for relay in relays:
            relay.stop()
        etcd.stop()


def through(replica: Gateway, world: World, token: str) -> int:
    """The status of a Kubernetes API request through one replica."""
    saved = world.gateway
    world.gateway = replica
    try:
        return raw_request(world, "GET", f"/k8s/clusters/{world.cluster_id}/api", token)[0]
    finally:
        world.gateway = saved


def fresh_token(world: World, first: Gateway, second: Gateway, name: str) -> str:
    """A login token of a cluster member, taken through A and already known to B."""
    if not any(u["username"] == name for u in world.admin.get("/v3/users")["data"]):
        world.user(name, role="cluster-member")
    token = first.api().login(name, USER_PASSWORD)
    wait_until(lambda: through(second, world, token) == 200, 5, "B never accepted the token")
    return token


def seconds_until_refused(replica: Gateway, world: World, token: str, limit: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if through(replica, world, token) == 401:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"the revoked token still worked on the other replica after {limit}s")


def revoke(replica: Gateway, token: str) -> None:
    replica.api(token).delete(f"/v3/tokens/{token.split(':', maxsplit=1)[0]}")


def metric(replica: Gateway, admin_token: str, name: str) -> float:
    ctx = ssl.create_default_context(cafile=str(replica.ca_file))
    request = urllib.request.Request(
        replica.url + "/metrics", headers={"Authorization": f"Bearer {admin_token}"}
    )
    with urllib.request.urlopen(request, context=ctx, timeout=10) as resp:
        text = resp.read().decode()
    values = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    ]
    return sum(values)


def readyz(replica: Gateway) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(replica.ca_file))
    try:
        with urllib.request.urlopen(replica.url + "/readyz", context=ctx, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


Ha = tuple[World, Gateway, Gateway, EtcdCluster, list[FaultProxy]]


def test_revocation_on_a_is_refused_on_b_within_a_second(ha: Ha) -> None:
    world, first, second, _, _ = ha
    token = fresh_token(world, first, second, "revoked-fast")
    revoke(first, token)
    assert seconds_until_refused(second, world, token, 1.0) < 1.0
    assert readyz(second) == (200, "ok")


def test_a_silently_stalled_watch_shows_in_readyz_and_is_reopened(ha: Ha) -> None:
    """B's connections to etcd go silent without being closed (its watch among them):
    B's own heartbeat, written on a new connection, does not come back on the feed, so
    B finds its feed behind and reopens its watch, and sees the revocation it had missed.
    /readyz says B is behind from the bound until the reopened watch has caught up: a
    moment only (the reopen comes at the next check, a few seconds at most), which a
    busy box's slow /readyz calls can miss; so it is waited for together with the reopen
    (``tests/unit/gateway/operations/test_readyz_feed.py`` holds what /readyz says)."""
    world, first, second, _, relays = ha
    token = fresh_token(world, first, second, "stalled-watch")
    restarts = metric(second, world.admin.token, "herdgate_store_feed_restarts_total")
    for relay in relays:
        relay.silence()
    revoke(first, token)
    assert through(second, world, token) == 200  # B has not heard of it

    said: list[tuple[int, str]] = []

    def behind_or_reopened() -> bool:
        answer = readyz(second)
        if "change feed is" in answer[1]:
            said.append(answer)
        reopened = metric(second, world.admin.token, "herdgate_store_feed_restarts_total")
        return bool(said) or reopened > restarts

    wait_until(behind_or_reopened, 30, "B never found its change feed behind", 0.5)
    for status, text in said:
        assert status == 503 and "the caches may be stale" in text
    wait_until(
        lambda: through(second, world, token) == 401, 15, "B never reopened its stalled watch"
    )
    assert metric(second, world.admin.token, "herdgate_store_feed_restarts_total") > restarts
    wait_until(lambda: readyz(second) == (200, "ok"), 15, "B never became ready again")


def test_after_a_compaction_while_bs_watch_was_cut_b_rebuilds(ha: Ha) -> None:
    world, first, second, etcd, relays = ha
    token = fresh_token(world, first, second, "revoked-compacted")
    reloads = metric(second, world.admin.token, "herdgate_store_feed_reloads_total")
    for relay in relays:
        relay.cut()
    try:
        revoke(first, token)
        for i in range(5):  # more history B has not seen
            first.api(world.admin.token).post(
                "/v3/users", {"username": f"while-cut-{i}", "password": USER_PASSWORD}
            )
        compact_now(etcd)
        # Cut off, B still has its old view: the token works there from memory.
        assert through(second, world, token) == 200
        status, text = readyz(second)
        assert status == 503 and "store" in text
    finally:
        for relay in relays:
            relay.passing()
    # B's watch comes back, finds its revision compacted and reloads from a fresh list.
    assert seconds_until_refused(second, world, token, 1.0) < 1.0
    users = {u["username"] for u in second.api(world.admin.token).get("/v3/users")["data"]}
    assert {f"while-cut-{i}" for i in range(5)} <= users
    assert metric(second, world.admin.token, "herdgate_store_feed_reloads_total") > reloads
    wait_until(lambda: readyz(second) == (200, "ok"), 10, "B never became ready again")


def test_one_etcd_member_killed_interrupts_nothing(ha: Ha) -> None:
    world, first, second, etcd, _ = ha
    token = fresh_token(world, first, second, "member-killed")
    admin_a = first.api(world.admin.token)
    # The member both replicas use, and the leader: an election on top of the fail-over.
    etcd.make_leader(0)
    etcd.kill(0)
    try:
        for i in range(10):
            for replica in (first, second):
                assert through(replica, world, token) == 200
            created = admin_a.post("/v3/tokens", {"description": f"during-{i}"})
            admin_a.delete(f"/v3/tokens/{created['id']}")
            second.api().login("member-killed", USER_PASSWORD)
        # The watch moved to a live member: revocation still reaches B at once.
        other = fresh_token(world, first, second, "member-killed")
        revoke(first, other)
        assert seconds_until_refused(second, world, other, 1.0) < 1.0
        assert readyz(first)[0] == readyz(second)[0] == 200
    finally:
        etcd.start(0)


def test_etcd_stopped_tokens_work_writes_503_then_resume(ha: Ha) -> None:
    world, first, second, etcd, _ = ha
    token = fresh_token(world, first, second, "etcd-down")
    kubeconfig = world.kubeconfig_for(world.admin, "etcd-down-admin")
    etcd.stop()
    try:
        for replica in (first, second):
            assert through(replica, world, token) == 200
        out = kubectl_run(kubectl("1.32"), kubeconfig, "get", "configmaps")
        assert out.returncode == 0, out.stderr
        with pytest.raises(ApiError) as caught:
            first.api(world.admin.token).post(
                "/v3/users", {"username": "while-down", "password": USER_PASSWORD}
            )
        assert caught.value.status == 503
        assert caught.value.body["message"] == "the store is unavailable; try again later"
        with pytest.raises(ApiError) as login:
            second.api().login("etcd-down", USER_PASSWORD)
        assert login.value.status == 503
        status, text = readyz(first)
        assert status == 503 and "store" in text
    finally:
        etcd.start()

    def write_works() -> bool:
        try:
            first.api(world.admin.token).post(
                "/v3/users", {"username": "after-etcd", "password": USER_PASSWORD}
            )
            return True
        except ApiError as exc:
            assert exc.status == 503, exc
            return False

    wait_until(write_works, 20, "writes never resumed after etcd came back")
    # B follows again: a revocation through A reaches it.
    again = fresh_token(world, first, second, "etcd-down")
    revoke(first, again)
    assert seconds_until_refused(second, world, again, 1.0) < 1.0
    wait_until(lambda: readyz(first) == readyz(second) == (200, "ok"), 15, "not ready after etcd")


def test_a_slow_path_to_etcd_is_slow_not_broken(ha: Ha) -> None:
    """Every chunk between B and etcd waits 0.2 s: B's writes still succeed and a
    revocation through A still reaches B (later)."""
    world, first, second, _, relays = ha
    token = fresh_token(world, first, second, "slow-path")
    for relay in relays:
        relay.delay(0.2)
    try:
        created = second.api(world.admin.token).post(
            "/v3/users", {"username": "made-on-a-slow-path", "password": USER_PASSWORD}
        )
        assert created["username"] == "made-on-a-slow-path"
        revoke(first, token)
        assert seconds_until_refused(second, world, token, 5.0) < 5.0
    finally:
        for relay in relays:
            relay.passing()
    wait_until(lambda: readyz(second) == (200, "ok"), 15, "B never became ready again")


@pytest.mark.parametrize("fault", ["reset", "truncate"])
def test_connections_to_etcd_reset_or_cut_mid_stream_are_survived(ha: Ha, fault: str) -> None:
    """B's connections to etcd (its watch among them) are reset, or cut after a few more
    bytes in the middle of an answer: B reconnects on its own, its writes work and a
    revocation through A reaches it."""
    world, first, second, _, relays = ha
    token = fresh_token(world, first, second, f"mid-stream-{fault}")
    for relay in relays:
        if fault == "reset":
            relay.reset()
        else:
            relay.truncate(40)
    revoke(first, token)
    assert seconds_until_refused(second, world, token, 5.0) < 5.0
    created = second.api(world.admin.token).post(
        "/v3/users", {"username": f"after-{fault}", "password": USER_PASSWORD}
    )
    assert created["username"] == f"after-{fault}"
    wait_until(lambda: readyz(second) == (200, "ok"), 15, "B never became ready again")

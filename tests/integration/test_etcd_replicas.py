"""Two gateway replicas (separate processes, state dirs and ports) sharing etcd, behind a
TCP load balancer: the agent holds a tunnel to each, either serves kubectl, and records
written through one replica are seen by the other."""

from __future__ import annotations

import ssl
import time
import urllib.request
from collections.abc import Iterator

import pytest
import yaml

from standin.harness import StandInProcess
from tests.binaries import kubectl
from tests.fixtures.etcd import Etcd, etcd  # noqa: F401 - the fixture
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
    write_kubeconfig,
)
from tests.integration.test_proxy_errors import raw_request

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory,
    etcd: Etcd,  # noqa: F811
) -> Iterator[tuple[World, Gateway, Gateway, TcpBalancer]]:
    tmp = tmp_path_factory.mktemp("etcd-replicas")
    ports = [free_port(), free_port()]
    lb = TcpBalancer(ports).start()
    url = f"https://127.0.0.1:{lb.port}"
    store = {"backend": "etcd", "etcd_endpoints": [etcd.url], "etcd_prefix": "/replicas-test/"}
    first = Gateway(tmp / "a", ports[0], tmp / "a.log")
    (tmp / "a.yaml").write_text(yaml.safe_dump({"server_url": url, "store": store}))
    # Replicas publish the balancer's address (the last --server-url wins).
    first.extra_args = ["--config", str(tmp / "a.yaml"), "--server-url", url]
    first.start()
    tls_dir = tmp / "a" / "tls"
    second = Gateway(tmp / "b", ports[1], tmp / "b.log", ca_path=tls_dir / "ca.crt")
    (tmp / "b.yaml").write_text(yaml.safe_dump({
        "server_url": url, "store": store,
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
        objects=agent_objects(),  # the manifest's rights for the agent; RBAC enforced
    )
    # The world talks to the load balancer, like users and agents do.
    front = Gateway(tmp / "a", lb.port, tmp / "front.log")
    admin = front.admin()
    cluster = admin.post("/v3/clusters", {"name": "ha"})
    agent_kc = standin.kubeconfig(tmp / "agent-kubeconfig", token=AGENT_SA_TOKEN)
    world = World(tmp, standin, front, admin, cluster["id"], "ha", NO_AGENT, agent_kc)
    world.agent = world.start_agent()
    try:
        yield world, first, second, lb
    finally:
        world.agent.stop()
        first.stop()
        second.stop()
        standin.stop()
        lb.stop()


def test_agent_reaches_both_replicas_and_either_serves(replicas: tuple) -> None:  # type: ignore[type-arg]
    world, first, second, _ = replicas
    wait_until(
        lambda: world.cluster()["replicas"] == {"live": 2, "withTunnel": 2},
        30,
        "the agent did not reach both replicas",
    )
    _, api = world.user("ha-user", role="cluster-member")
    kc = write_kubeconfig(
        world.tmp / "kc-ha",
        api.post(f"/v3/clusters/{world.cluster_id}?action=generateKubeconfig")["config"],
    )
    for _ in range(6):
        out = kubectl_run(kubectl("1.32"), kc, "get", "configmaps")
        assert out.returncode == 0, out.stderr
    # Directly against each replica, too.
    for replica in (first, second):
        status, _ = raw_request_to(replica, world, api.token)
        assert status == 200


def raw_request_to(replica: Gateway, world: World, token: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    saved = world.gateway
    world.gateway = replica
    try:
        return raw_request(world, "GET", f"/k8s/clusters/{world.cluster_id}/api", token)
    finally:
        world.gateway = saved


def test_writes_through_one_replica_reach_the_other(replicas: tuple) -> None:  # type: ignore[type-arg]
    world, first, second, _ = replicas
    admin_a = first.api(world.admin.token)
    created = admin_a.post("/v3/users", {"username": "made-on-a", "password": USER_PASSWORD})
    admin_a.post("/v3/clusterroletemplatebindings",
                 {"clusterId": world.cluster_id, "userId": created["id"],
                  "roleTemplateId": "read-only"})  # fmt: skip

    def login_on_b() -> str | None:
        try:
            return second.api().login("made-on-a", USER_PASSWORD)
        except ApiError:
            return None

    token = wait_until(login_on_b, 5, "the user created on A never reached B")
    assert raw_request_to(first, world, token)[0] == 200
    first.api(token).delete(f"/v3/tokens/{token.split(':')[0]}")
    started = time.monotonic()
    wait_until(
        lambda: raw_request_to(second, world, token)[0] == 401, 5, "revocation on A never reached B"
    )
    assert time.monotonic() - started < 2


def test_losing_one_replica_keeps_service(replicas: tuple) -> None:  # type: ignore[type-arg]
    world, first, _, _ = replicas
    kc = world.kubeconfig_for(world.admin, "ha-admin")
    first.stop()
    for _ in range(6):
        out = kubectl_run(kubectl("1.32"), kc, "get", "configmaps")
        assert out.returncode == 0, out.stderr


def _metrics(gateway: Gateway, world: World) -> str:
    ctx = ssl.create_default_context(cafile=str(gateway.ca_file))
    request = urllib.request.Request(gateway.url + "/metrics")
    request.add_header("Authorization", f"Bearer {world.admin.token}")
    with urllib.request.urlopen(request, context=ctx, timeout=10) as response:
        return str(response.read().decode())


def test_one_controller_and_the_same_status_through_either_replica(replicas: tuple) -> None:  # type: ignore[type-arg]
    """Issue 17: the cluster's controller runs on one replica (the lease holder); both
    show the status it stored; when it stops, the other takes the lease over."""
    world, first, second, _ = replicas
    for replica in (first, second):
        if replica.process is None:  # stopped by the test before
            replica.start()
    wait_until(
        lambda: world.cluster()["replicas"] == {"live": 2, "withTunnel": 2},
        30,
        "the agent did not reach both replicas",
    )
    views = [g.api(world.admin.token) for g in (first, second)]
    path = f"/v3/clusters/{world.cluster_id}"
    wait_until(
        lambda: all(v.get(path)["state"] == "active" and v.get(path)["version"] for v in views),
        30,
        "not active with a version on both replicas",
    )
    one, two = (v.get(path) for v in views)
    for field in ("state", "conditions", "version", "nodes", "agents", "controllerReplica"):
        assert one[field] == two[field], field
    # Replica ids are <host>-<pid>-<random>: the one that wrote the status is one of ours.
    assert one["controllerReplica"]
    holders = [
        g
        for g in (first, second)
        if g.process is not None and f"-{g.process.pid}-" in one["controllerReplica"]
    ]
    assert len(holders) == 1, one["controllerReplica"]
    holder = holders[0]
    other = second if holder is first else first
    other_pid = other.process.pid if other.process is not None else -1
    runs = f"controller of cluster {world.cluster_id} runs here"
    # The access sync runs where the controller runs, and only there.
    synced = f'herdgate_access_sync_last_success_timestamp_seconds{{cluster="{world.cluster_id}"}}'
    wait_until(lambda: synced in _metrics(holder, world), 15, "no access sync on the holder")
    assert synced not in _metrics(other, world)
    # The holder stops (and gives its lease up): the other replica takes over.
    holder.stop()
    try:
        other_view = other.api(world.admin.token)
        wait_until(
            lambda: f"-{other_pid}-" in other_view.get(path)["controllerReplica"],
            30,
            "the other replica never took the controller over",
        )
        assert runs in other.log()
        wait_until(lambda: other_view.get(path)["state"] == "active", 30, "not active")
        # ... and its access sync with it: a binding made now reaches the cluster.
        user = other_view.post(
            "/v3/users", {"username": "after-takeover", "password": USER_PASSWORD}
        )
        binding = other_view.post(
            "/v3/clusterroletemplatebindings",
            {"clusterId": world.cluster_id, "userId": user["id"], "roleTemplateId": "read-only"},
        )
        world.wait_synced(binding["id"])
        assert synced in _metrics(other, world)
    finally:
        holder.start()
    wait_until(
        lambda: world.cluster()["replicas"] == {"live": 2, "withTunnel": 2},
        30,
        "the agent did not reach the restarted replica",
    )


ACE_TOKENS = "/apis/auth.herdgate.dev/v1/namespaces/herdgate-system/clusterauthtokens"


def _ace_tokens(world: World) -> set[str]:
    """The ClusterAuthToken records in the cluster (read as its administrator)."""
    listed = world.downstream(ACE_TOKENS, token=CLUSTER_ADMIN_TOKEN)
    return {item["metadata"]["name"] for item in (listed or {}).get("items", [])}


def _ace_series(gateway: Gateway, world: World) -> dict[str, float]:
    """This replica's ACE sync series of the cluster: name (and action) → value."""
    out: dict[str, float] = {}
    for line in _metrics(gateway, world).splitlines():
        if line.startswith("herdgate_ace_sync_") and f'cluster="{world.cluster_id}"' in line:
            name, _, value = line.rpartition(" ")
            out[name] = out.get(name, 0.0) + float(value)
    return out


def _ace_writes(gateway: Gateway, world: World) -> float:
    return sum(
        v
        for k, v in _ace_series(gateway, world).items()
        if k.startswith("herdgate_ace_sync_changes")
    )


def _ace_synced(view: dict) -> dict | None:  # type: ignore[type-arg]
    return next((c for c in view["conditions"] if c["type"] == "ACESynced"), None)


def _when_ace_synced(view: dict) -> dict | None:  # type: ignore[type-arg]
    synced = _ace_synced(view)
    return view if synced is not None and synced["status"] == "True" else None


def test_only_the_lease_holder_writes_ace_records_and_the_other_takes_over(
    replicas: tuple,  # type: ignore[type-arg]
) -> None:
    """Issue 19: the ACE record sync runs under the cluster's lease, on the replica where
    the cluster's controller runs; the other replica writes nothing; when the holder is
    killed (no release: its lease must expire), the other takes the lease and the records
    over."""
    world, first, second, _ = replicas
    for replica in (first, second):
        if replica.process is None:
            replica.start()
    wait_until(
        lambda: world.cluster()["replicas"] == {"live": 2, "withTunnel": 2},
        30,
        "the agent did not reach both replicas",
    )
    port = world.standin.url.rsplit(":", 1)[1]
    world.admin.put(
        f"/v3/clusters/{world.cluster_id}",
        {
            "localClusterAuthEndpoint": {
                "enabled": True,
                "fqdn": f"127.0.0.1:{port}",
                "caCerts": world.standin.ca_file.read_text(),
            }
        },
    )
    _, api = world.user("ace-before", role="cluster-member")
    before = api.token.split(":")[0]
    wait_until(lambda: before in _ace_tokens(world), 20, "the token never reached the cluster")
    path = f"/v3/clusters/{world.cluster_id}"
    view = wait_until(lambda: _when_ace_synced(world.admin.get(path)), 15, "ACESynced never True")
    holder = next(
        g
        for g in (first, second)
        if g.process is not None and f"-{g.process.pid}-" in view["controllerReplica"]
    )
    other = second if holder is first else first
    assert _ace_writes(holder, world) >= 2  # the user's and the token's records at least
    assert any("last_success" in k for k in _ace_series(holder, world))
    assert _ace_series(other, world) == {}  # the other replica wrote nothing, tried nothing

    # The holder dies without giving its lease up.
    assert holder.process is not None
    holder.process.kill()
    holder.process.wait(10)
    holder.process = None
    try:
        other_pid = other.process.pid if other.process is not None else -1
        other_view = other.api(world.admin.token)
        wait_until(
            lambda: f"-{other_pid}-" in other_view.get(path)["controllerReplica"],
            60,
            "the other replica never took the cluster's lease over",
        )
        # A token made now reaches the cluster through the new holder, and a revoked one
        # leaves it.
        after_id = other_view.post(
            "/v3/users", {"username": "ace-after", "password": USER_PASSWORD}
        )["id"]
        binding = other_view.post(
            "/v3/clusterroletemplatebindings",
            {"clusterId": world.cluster_id, "userId": after_id, "roleTemplateId": "read-only"},
        )
        world.wait_synced(binding["id"])
        after = other.api().login("ace-after", USER_PASSWORD).split(":")[0]
        other_view.delete(f"/v3/tokens/{before}")
        wait_until(
            lambda: (t := _ace_tokens(world)) and after in t and before not in t,
            30,
            "the new holder did not bring the records in step",
        )
        assert _ace_writes(other, world) >= 2
        assert _ace_synced(other_view.get(path))["status"] == "True"  # type: ignore[index]
    finally:
        holder.start()
    wait_until(
        lambda: world.cluster()["replicas"] == {"live": 2, "withTunnel": 2},
        30,
        "the agent did not reach the restarted replica",
    )

"""A soak: mixed kubectl-shaped traffic over many clusters through several replicas.

``python -m bench.soak [--minutes 10] [--clusters 20] [--replicas 3] [--out FILE.json]
[--png FILE.png]`` (``--plot FILE.json --png FILE.png`` draws an earlier run's figure).

What runs, all on 127.0.0.1 (the helpers of tests/integration, as the HA test does):

* a three-member etcd cluster (``tests.fixtures.etcd.start_etcd_cluster``);
* ``--replicas`` gateway processes on it, behind haproxy in TCP mode (``balance
  roundrobin``; ``tests.integration.test_ha_tunnels.Haproxy``), each replica found by the
  agents at its own address (``replica.advertise_url`` derived from ``listen``);
* ``--clusters`` clusters, each a stand-in API server that enforces RBAC (the agent's
  least-privilege objects, a pod ``soak`` and configmaps ``soak-0`` ... ``soak-4``) with
  its agent, which holds a tunnel to every replica;
* a user bound ``cluster-member`` on every cluster; all traffic is the user's, through
  haproxy, with the token of the kubeconfig the gateway generated for each cluster.

Traffic (every loop bounded by the run's deadline and by a count):

* ``--workers`` clients paced to ``--rate`` requests a second in all: GETs and LISTs
  (JSON and kubectl's Table form), discovery; HTTP/1.1 keep-alive, each client opening a
  new connection every 20-100 requests (clients come and go, so leaked connections
  would show);
* a writer patching the configmaps (``--write-rate``), so the watches carry events;
* ``--watches`` watches per cluster, informer-style: LIST, then WATCH from its
  resourceVersion with ``timeoutSeconds`` 20-40 s, started again when they end (a 410
  Expired relists);
* the real kubectl every ``--kubectl-every`` seconds, in turn: ``logs -f`` (a short
  follow), ``exec`` (``echo``), ``port-forward`` (an HTTP request through) and ``get``.

At the middle of the run one replica is killed (SIGKILL) and started again. Every answer
is counted by status; a 5xx, a broken connection or a failed kubectl is allowed only
within ``--window`` seconds after the kill (the injected restart) and every other one is
reported. Each replica's RSS (``VmRSS``) and open descriptors (``/proc/PID/fd``) are read
every ``--sample`` seconds. "Flat after warm-up": per replica, the median of the last
third of its life in the run against the median of the second third (the restarted
replica: of its life after the restart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from standin.harness import StandInProcess
from tests.binaries import kubectl
from tests.fixtures.etcd import EtcdCluster, start_etcd_cluster
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
from tests.integration.env import Api, Gateway, free_port, wait_until
from tests.integration.test_ha_tunnels import Haproxy, Rig

NAMESPACE = "default"
POD = "soak"
CONFIGMAPS = 5
USER = "soak-user"

# ---------------------------------------------------------------------------------------
# What is measured and how it is judged (pure: tests/unit/test_bench_soak.py)


@dataclass(frozen=True)
class Sample:
    """One reading of one process."""

    t: float
    """Seconds since the traffic started."""
    replica: str
    pid: int
    rss_kib: int
    fds: int
    clients: int = -1
    """Connections accepted on the replica's listen port (agents' tunnels, haproxy's
    connections); -1: not read."""


@dataclass(frozen=True)
class Outcome:
    """One answer: an HTTP status (``"200"``), a broken request (``"conn:<error>"``,
    ``"timeout"``) or a kubectl's result (``"ok"``, ``"exit 1"``, ``"bad output"``)."""

    t: float
    kind: str
    outcome: str


def is_failure(outcome: str) -> bool:
    """What counts against the run: a 5xx, a broken connection, a timeout, a failed
    kubectl, and any 4xx (the traffic only asks what the user may do, of objects that
    exist)."""
    if outcome.isdigit():
        return int(outcome) >= 400
    return outcome != "ok"


@dataclass(frozen=True)
class Window:
    """Seconds (since the traffic started) within which failures are allowed."""

    start: float
    end: float

    def __contains__(self, t: object) -> bool:
        return isinstance(t, (int, float)) and self.start <= t <= self.end


def failures(outcomes: Sequence[Outcome], windows: Sequence[Window]) -> tuple[int, list[Outcome]]:
    """(failures inside a window, the failures outside every window)."""
    inside = 0
    outside: list[Outcome] = []
    for item in outcomes:
        if not is_failure(item.outcome):
            continue
        if any(item.t in window for window in windows):
            inside += 1
        else:
            outside.append(item)
    return inside, outside


def tally(outcomes: Sequence[Outcome]) -> dict[str, dict[str, int]]:
    """kind -> outcome -> count."""
    out: dict[str, Counter[str]] = {}
    for item in outcomes:
        out.setdefault(item.kind, Counter())[item.outcome] += 1
    return {kind: dict(sorted(counts.items())) for kind, counts in sorted(out.items())}


@dataclass(frozen=True)
class Flatness:
    """One process's life in the run, cut in thirds by time: medians of the second third
    (after warm-up) and of the last, and the last reading."""

    replica: str
    pid: int
    segment: str
    start: float
    end: float
    samples: int
    rss_second_kib: float
    rss_last_kib: float
    fds_second: float
    fds_last: float
    fds_final: int
    rss_final_kib: int
    clients_second: float = -1
    clients_last: float = -1
    """Medians of the accepted connections (``Sample.clients``), -1 when not read."""

    @property
    def rss_growth_kib(self) -> float:
        return self.rss_last_kib - self.rss_second_kib

    @property
    def fds_growth(self) -> float:
        return self.fds_last - self.fds_second


def flatness(samples: Sequence[Sample], segment: str = "run") -> Flatness | None:
    """For the samples of one process (one replica, one pid) over one segment of the run;
    None when a third holds no sample."""
    if not samples:
        return None
    ordered = sorted(samples, key=lambda s: s.t)
    start, end = ordered[0].t, ordered[-1].t
    third = (end - start) / 3
    second = [s for s in ordered if start + third <= s.t < start + 2 * third]
    last = [s for s in ordered if s.t >= start + 2 * third]
    if not second or not last:
        return None
    return Flatness(
        replica=ordered[0].replica,
        pid=ordered[0].pid,
        segment=segment,
        start=start,
        end=end,
        samples=len(ordered),
        rss_second_kib=statistics.median(s.rss_kib for s in second),
        rss_last_kib=statistics.median(s.rss_kib for s in last),
        fds_second=statistics.median(s.fds for s in second),
        fds_last=statistics.median(s.fds for s in last),
        fds_final=ordered[-1].fds,
        rss_final_kib=ordered[-1].rss_kib,
        clients_second=statistics.median(s.clients for s in second),
        clients_last=statistics.median(s.clients for s in last),
    )


def lives(samples: Sequence[Sample]) -> dict[tuple[str, int], list[Sample]]:
    """Samples grouped by process: (replica, pid), in the order first seen."""
    out: dict[tuple[str, int], list[Sample]] = {}
    for sample in samples:
        out.setdefault((sample.replica, sample.pid), []).append(sample)
    return out


BEFORE = "before the kill"
AFTER = "after the restart"


def judge(samples: Sequence[Sample], restart: Window | None) -> list[Flatness]:
    """Flatness of every process in each segment of the run. Without a restart, one
    segment, the whole run. With one (``restart``: from the kill to the end of its
    window), "before the kill", every replica until the kill, and "after the restart",
    the survivors after the window (they take over the killed replica's connections in
    it) and the restarted replica over its whole new life."""
    out: list[Flatness] = []
    for life in lives(samples).values():
        if restart is None:
            segments = [("run", life)]
        else:
            before = [s for s in life if s.t < restart.start]
            after = [s for s in life if s.t > restart.end or before == []]
            segments = [(BEFORE, before), (AFTER, [s for s in after if s.t > restart.start])]
        for name, part in segments:
            judged = flatness(part, name)
            if judged is not None:
                out.append(judged)
    return out


def describe(result: Flatness) -> str:
    return (
        f"{result.replica} {result.segment} (pid {result.pid}, "
        f"{result.start:.0f}-{result.end:.0f} s, "
        f"{result.samples} samples): RSS {result.rss_second_kib / 1024:.1f} -> "
        f"{result.rss_last_kib / 1024:.1f} MiB ({result.rss_growth_kib / 1024:+.2f} MiB), "
        f"descriptors {result.fds_second:.0f} -> {result.fds_last:.0f} "
        f"({result.fds_growth:+.0f}; final {result.fds_final}), of them accepted "
        f"connections {result.clients_second:.0f} -> {result.clients_last:.0f}"
    )


# ---------------------------------------------------------------------------------------
# The processes


@dataclass
class Settings:
    seconds: float = 600.0
    clusters: int = 20
    replicas: int = 3
    rate: float = 30.0
    """GET/LIST requests a second, all clients together."""
    workers: int = 4
    write_rate: float = 2.0
    watches: int = 2
    """Watches per cluster."""
    kubectl_every: float = 3.0
    sample: float = 5.0
    window: float = 10.0
    """Seconds after the kill within which failures are allowed."""
    restart_at: float = 0.5
    """When the replica is killed, as a fraction of the run."""
    seed: int = 19


@dataclass
class Cluster:
    rig: Rig
    standin: StandInProcess
    prefix: str
    """``https://127.0.0.1:<haproxy>/k8s/clusters/<id>``."""
    token: str
    kubeconfig: Path


@dataclass
class Soak:
    tmp: Path
    etcd: EtcdCluster
    haproxy: Haproxy
    replicas: list[Gateway]
    admin: Api
    clusters: list[Cluster] = field(default_factory=list)
    setup_s: float = 0.0

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.haproxy.port}"

    @property
    def ca_file(self) -> Path:
        return self.tmp / "r0" / "tls" / "ca.crt"

    def stop(self) -> None:
        for cluster in self.clusters:
            with contextlib.suppress(Exception):
                cluster.rig.world.agent.stop()
        for gateway in self.replicas:
            with contextlib.suppress(Exception):
                gateway.stop()
        for cluster in self.clusters:
            with contextlib.suppress(Exception):
                cluster.standin.stop()
        with contextlib.suppress(Exception):
            self.haproxy.stop()
        with contextlib.suppress(Exception):
            self.etcd.stop()


def cluster_objects() -> list[dict[str, Any]]:
    """What each stand-in starts with: the agent's RBAC, a pod and a few configmaps."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": POD, "namespace": NAMESPACE},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    }
    maps = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"soak-{i}", "namespace": NAMESPACE},
            "data": {"n": "0"},
        }
        for i in range(CONFIGMAPS)
    ]
    return [*agent_objects(), pod, *maps]


def start_replicas(tmp: Path, count: int, etcd: EtcdCluster) -> tuple[Haproxy, list[Gateway]]:
    """``count`` gateways on ``etcd`` behind haproxy (TCP, round robin); every replica
    serves the first one's certificate, made for the public name ``localhost``."""
    ports = [free_port() for _ in range(count)]
    haproxy = Haproxy.start(tmp, "roundrobin", ports)
    public = f"https://localhost:{haproxy.port}"
    store = {"backend": "etcd", "etcd_endpoints": etcd.urls, "etcd_prefix": "/soak/"}
    replicas: list[Gateway] = []
    tls_dir = tmp / "r0" / "tls"
    try:
        for i, port in enumerate(ports):
            settings: dict[str, object] = {"server_url": public, "store": store}
            if i:
                settings["tls"] = {
                    "cert_file": str(tls_dir / "server.crt"),
                    "key_file": str(tls_dir / "server.key"),
                    "ca_file": str(tls_dir / "ca.crt"),
                }
            (tmp / f"r{i}.yaml").write_text(yaml.safe_dump(settings))
            gateway = Gateway(
                tmp / f"r{i}", port, tmp / f"r{i}.log", ca_path=(tls_dir / "ca.crt") if i else None
            )
            gateway.extra_args = ["--config", str(tmp / f"r{i}.yaml"), "--server-url", public]
            gateway.start(timeout=60)
            replicas.append(gateway)
    except BaseException:
        for gateway in replicas:
            gateway.stop()
        haproxy.stop()
        raise
    return haproxy, replicas


def add_clusters(soak: Soak, count: int, log: Any = print) -> None:
    """Stand-ins and agents first (they start in parallel), then each cluster is waited
    for: tunnels to every replica, active, its RBAC synced, the user bound."""
    admin = soak.admin
    user = admin.post("/v3/users", {"username": USER, "password": USER_PASSWORD})
    front = Gateway(soak.tmp / "r0", soak.haproxy.port, soak.tmp / "front.log")
    user_api = front.api()
    user_api.token = user_api.login(USER, USER_PASSWORD)
    tokens = {
        AGENT_SA_TOKEN: (AGENT_SA_USER, "uid-agent", list(AGENT_SA_GROUPS)),
        CLUSTER_ADMIN_TOKEN: ("cluster-admin", "uid-admin", ["system:masters"]),
    }
    for c in range(count):
        ctmp = soak.tmp / f"cluster-{c}"
        ctmp.mkdir()
        standin = StandInProcess.start(
            ctmp / "apiserver", tokens=tokens, objects=cluster_objects(), timeout=60
        )
        name = f"soak-{c}"
        cluster = admin.post("/v3/clusters", {"name": name})
        agent_kc = standin.kubeconfig(ctmp / "agent-kubeconfig", token=AGENT_SA_TOKEN)
        world = World(ctmp, standin, front, admin, cluster["id"], name, NO_AGENT, agent_kc)
        health = free_port()
        (ctmp / "agent.yaml").write_text(yaml.safe_dump({"health_listen": f"127.0.0.1:{health}"}))
        rig = Rig(world, f"http://127.0.0.1:{health}/metrics", ctmp / "kubeconfig")
        world.agent = world.start_agent("--config", str(ctmp / "agent.yaml"))
        soak.clusters.append(Cluster(rig, standin, "", "", rig.kubeconfig))
        log(f"  cluster {name}: stand-in and agent started")
    for cluster in soak.clusters:
        rig = cluster.rig
        world = rig.world
        wait_until(
            lambda rig=rig: rig.agent_tunnels() >= len(soak.replicas),
            60,
            f"agent of {world.cluster_name} did not reach every replica",
            interval=0.1,
        )
        world.wait_state("active", 60)
        world.wait_admin_synced(60)
        binding = admin.post(
            "/v3/clusterroletemplatebindings",
            {
                "clusterId": world.cluster_id,
                "userId": user["id"],
                "roleTemplateId": "cluster-member",
            },
        )
        world.wait_synced(binding["id"], 60)
        config = user_api.post(f"/v3/clusters/{world.cluster_id}?action=generateKubeconfig")
        doc = yaml.safe_load(config["config"])
        rig.kubeconfig.write_text(config["config"])
        rig.kubeconfig.chmod(0o600)
        server = str(doc["clusters"][0]["cluster"]["server"])
        cluster.token = str(doc["users"][0]["user"]["token"])
        cluster.prefix = soak.base + server[server.index("/k8s/clusters/") :]
        log(f"  cluster {world.cluster_name}: ready")


def start(tmp: Path, settings: Settings, log: Any = print) -> Soak:
    began = time.monotonic()
    etcd = start_etcd_cluster(tmp / "etcd", members=3)
    try:
        haproxy, replicas = start_replicas(tmp, settings.replicas, etcd)
    except BaseException:
        etcd.stop()
        raise
    front = Gateway(tmp / "r0", haproxy.port, tmp / "front.log")
    soak = Soak(tmp, etcd, haproxy, replicas, front.admin())
    log(f"etcd (3 members), {settings.replicas} replicas and haproxy :{haproxy.port} are up")
    try:
        add_clusters(soak, settings.clusters, log)
    except BaseException:
        soak.stop()
        raise
    soak.setup_s = time.monotonic() - began
    return soak


# ---------------------------------------------------------------------------------------
# /proc


def read_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def read_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def socket_inodes(pid: int) -> set[str]:
    out: set[str] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    out.add(target[8:-1])
    except OSError:
        pass
    return out


def accepted(pid: int, port: int) -> int:
    """TCP connections of ``pid`` whose local port is ``port`` and that are not the
    listening socket (/proc/PID/net/tcp, tcp6)."""
    inodes = socket_inodes(pid)
    count = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as handle:
            next(handle, None)
            for line in handle:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                listening = fields[3] == "0A"
                if local_port == port and not listening and fields[9] in inodes:
                    count += 1
    return count


def read(name: str, pid: int, t: float, port: int = 0) -> Sample | None:
    rss, fds = read_rss_kib(pid), read_fds(pid)
    if rss is None or fds is None:
        return None
    return Sample(t, name, pid, rss, fds, accepted(pid, port) if port else -1)


# ---------------------------------------------------------------------------------------
# The traffic


TABLE = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)
REQUESTS: list[tuple[str, str, str]] = [
    # kind, path (under the cluster's prefix), Accept
    ("get", "/api/v1/namespaces/default/configmaps/soak-{i}", "application/json"),
    ("get", "/api/v1/namespaces/default/pods/soak", "application/json"),
    ("list", "/api/v1/namespaces/default/configmaps", "application/json"),
    ("list", "/api/v1/namespaces/default/configmaps?limit=500", TABLE),
    ("list", "/api/v1/pods?limit=500", TABLE),
    ("list", "/api/v1/namespaces", "application/json"),
    ("discovery", "/api", "application/json"),
    ("discovery", "/apis", "application/json"),
]
USER_AGENT = "kubectl/v1.32.0 (linux/amd64) kubernetes/soak"
REQUEST_TIMEOUT_S = 20.0
KUBECTL_TIMEOUT_S = 30.0


def outcome_of(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    return f"conn:{type(exc).__name__}"


class Traffic:
    """The load, on one asyncio loop; ``outcomes`` and ``samples`` fill as it runs."""

    def __init__(self, soak: Soak, settings: Settings, log: Any = print) -> None:
        self.soak = soak
        self.settings = settings
        self.log = log
        self.rng = random.Random(settings.seed)
        self.t0 = 0.0
        self.deadline = 0.0
        self.outcomes: list[Outcome] = []
        self.samples: list[Sample] = []
        self.events = 0
        """Watch events received (ADDED, MODIFIED, BOOKMARK ...)."""
        self.watch_starts = 0
        self.kill_t: float | None = None
        self.killed: str | None = None
        self.killed_pid: int | None = None
        self.healthy_t: float | None = None
        self.rejoined_t: float | None = None
        self.context = ssl.create_default_context(cafile=str(soak.ca_file))
        self.kubectl = kubectl("1.32")

    def now(self) -> float:
        return time.monotonic() - self.t0

    def record(self, kind: str, outcome: str) -> None:
        self.outcomes.append(Outcome(round(self.now(), 3), kind, outcome))

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def session(self, limit: int) -> Any:
        import aiohttp

        connector = aiohttp.TCPConnector(ssl=self.context, limit=limit, keepalive_timeout=30)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            headers={"User-Agent": USER_AGENT},
        )

    async def request(
        self, session: Any, kind: str, method: str, url: str, token: str, **kw: Any
    ) -> Any:
        """One request; the parsed JSON body of a 2xx, else None (the outcome is
        recorded either way)."""
        headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
        try:
            async with session.request(method, url, headers=headers, **kw) as response:
                body = await response.read()
                self.record(kind, str(response.status))
                if 200 <= response.status < 300:
                    return json.loads(body)
        except Exception as exc:  # noqa: BLE001 - aiohttp's and the OS's: counted, not fatal
            self.record(kind, outcome_of(exc))
        return None

    async def worker(self, index: int) -> None:
        rng = random.Random(self.settings.seed * 1000 + index)
        period = self.settings.workers / self.settings.rate
        bound = int(self.settings.seconds * self.settings.rate) + 1000
        session = self.session(limit=1)
        budget = rng.randint(20, 100)
        next_at = time.monotonic() + rng.random() * period
        try:
            for _ in range(bound):
                if not self.running():
                    break
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at + period, time.monotonic() - period)
                if budget <= 0:  # this client goes, another comes
                    await session.close()
                    session = self.session(limit=1)
                    budget = rng.randint(20, 100)
                budget -= 1
                cluster = rng.choice(self.soak.clusters)
                kind, path, accept = rng.choice(REQUESTS)
                url = cluster.prefix + path.format(i=rng.randrange(CONFIGMAPS))
                await self.request(
                    session, kind, "GET", url, cluster.token, headers={"Accept": accept}
                )
        finally:
            await session.close()

    async def writer(self) -> None:
        rng = random.Random(self.settings.seed + 7)
        period = 1.0 / self.settings.write_rate
        bound = int(self.settings.seconds * self.settings.write_rate) + 100
        session = self.session(limit=1)
        try:
            for n in range(bound):
                if not self.running():
                    break
                await asyncio.sleep(period)
                cluster = rng.choice(self.soak.clusters)
                name = f"soak-{rng.randrange(CONFIGMAPS)}"
                url = f"{cluster.prefix}/api/v1/namespaces/{NAMESPACE}/configmaps/{name}"
                await self.request(
                    session, "patch", "PATCH", url, cluster.token,
                    data=json.dumps({"data": {"n": str(n)}}),
                    headers={"Content-Type": "application/merge-patch+json"},
                )  # fmt: skip
        finally:
            await session.close()

    async def watcher(self, cluster: Cluster, index: int) -> None:
        """LIST then WATCH from its resourceVersion, over and over, informer-style."""
        import aiohttp

        rng = random.Random(f"{self.settings.seed} {cluster.prefix} {index}")
        base = f"{cluster.prefix}/api/v1/namespaces/{NAMESPACE}/configmaps"
        headers = {"Authorization": f"Bearer {cluster.token}", "Accept": "application/json"}
        bound = int(self.settings.seconds) + 10  # at most one restart a second
        await asyncio.sleep(rng.random() * 2)
        async with self.session(limit=0) as session:
            version = ""
            for _ in range(bound):
                if not self.running():
                    break
                if not version:
                    listed = await self.request(session, "list", "GET", base, cluster.token)
                    if listed is None:
                        await asyncio.sleep(1)
                        continue
                    version = str(listed["metadata"]["resourceVersion"])
                remaining = self.deadline - time.monotonic()
                # Ended by the server by the run's end, not cut by our timeout below: a
                # cut TLS connection's close outlives the session and the event loop
                # (left to the garbage collector: ResourceWarning, unclosed transport).
                seconds = max(1, min(rng.randint(20, 40), int(remaining)))
                url = (
                    f"{base}?watch=1&allowWatchBookmarks=true&resourceVersion={version}"
                    f"&timeoutSeconds={seconds}"
                )
                timeout = aiohttp.ClientTimeout(total=seconds + 15, sock_read=seconds + 15)
                try:
                    async with asyncio.timeout(max(1.0, remaining + 1)):
                        async with session.get(url, headers=headers, timeout=timeout) as response:
                            self.record("watch", str(response.status))
                            self.watch_starts += 1
                            if response.status != 200:
                                await response.read()
                                version = ""
                                await asyncio.sleep(1)
                                continue
                            async for line in response.content:
                                if not line.strip():
                                    continue
                                event = json.loads(line)
                                self.events += 1
                                if event.get("type") == "ERROR":
                                    version = ""  # 410 Expired: list again
                                    break
                                rv = event.get("object", {}).get("metadata", {})
                                version = str(rv.get("resourceVersion") or version)
                except TimeoutError:
                    if not self.running():
                        break  # the run's end
                    self.record("watch-end", "timeout")
                    version = ""
                except Exception as exc:  # noqa: BLE001 - counted; the watch starts again
                    self.record("watch-end", outcome_of(exc))
                    version = ""
                    await asyncio.sleep(0.5)

    async def kubectls(self) -> None:
        rng = random.Random(self.settings.seed + 11)
        kinds = ["logs -f", "exec", "port-forward", "get"]
        bound = int(self.settings.seconds / self.settings.kubectl_every) + 10
        for n in range(bound):
            if not self.running():
                break
            await asyncio.sleep(self.settings.kubectl_every)
            if not self.running():
                break
            cluster = rng.choice(self.soak.clusters)
            kind = kinds[n % len(kinds)]
            try:
                async with asyncio.timeout(KUBECTL_TIMEOUT_S):
                    outcome = await self.one_kubectl(self.kubectl, cluster, kind, n)
            except TimeoutError:
                outcome = "timeout"
            self.record(f"kubectl {kind}", outcome)

    async def one_kubectl(self, binary: str, cluster: Cluster, kind: str, n: int) -> str:
        home = cluster.kubeconfig.parent / "kubectl-home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env["HOME"] = str(home)
        base = [binary, "--kubeconfig", str(cluster.kubeconfig), "--request-timeout=15s"]
        if kind == "exec":
            words = f"soak {n}"
            args = ["exec", POD, "--", "echo", words]
            return await run_to_end([*base, *args], env, expect=f"{words}\n")
        if kind == "get":
            return await run_to_end([*base, "get", "configmaps", "-o", "name"], env, "soak-0")
        if kind == "logs -f":
            return await follow_logs(base, env)
        return await port_forward(base, env)

    async def sampler(self) -> None:
        bound = int(self.settings.seconds / self.settings.sample) + 10
        for _ in range(bound):
            t = self.now()
            for i, gateway in enumerate(self.soak.replicas):
                process = gateway.process
                if process is not None and process.poll() is None:
                    sample = read(f"r{i}", process.pid, round(t, 3), gateway.port)
                    if sample is not None:
                        self.samples.append(sample)
            if not self.running():
                break
            await asyncio.sleep(
                min(self.settings.sample, max(0.0, self.deadline - time.monotonic()))
            )

    async def restart(self) -> None:
        """SIGKILL one replica at ``restart_at`` of the run and start it again."""
        await asyncio.sleep(self.settings.seconds * self.settings.restart_at)
        index = len(self.soak.replicas) - 1
        victim = self.soak.replicas[index]
        assert victim.process is not None
        self.killed, self.killed_pid = f"r{index}", victim.process.pid
        victim.process.send_signal(signal.SIGKILL)
        self.kill_t = self.now()
        self.log(f"{self.kill_t:6.1f} s: kill -9 of replica r{index} (pid {self.killed_pid})")
        await asyncio.to_thread(victim.process.wait, 10)
        victim.process = None
        await asyncio.to_thread(victim.start, 60)
        self.healthy_t = self.now()
        self.log(f"{self.healthy_t:6.1f} s: r{index} is back (healthy)")

        def rejoined() -> bool:
            replicas = len(self.soak.replicas)
            return all(c.rig.agent_tunnels() >= replicas for c in self.soak.clusters)

        try:
            await asyncio.to_thread(wait_until, rejoined, 60, "agents did not rejoin", 0.2)
            self.rejoined_t = self.now()
            self.log(f"{self.rejoined_t:6.1f} s: every agent holds a tunnel to r{index} again")
        except TimeoutError:
            self.log("agents did not all rejoin the restarted replica within 60 s")

    async def run(self) -> None:
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.settings.seconds
        tasks = [asyncio.create_task(self.sampler()), asyncio.create_task(self.restart())]
        tasks += [asyncio.create_task(self.worker(i)) for i in range(self.settings.workers)]
        tasks.append(asyncio.create_task(self.writer()))
        tasks.append(asyncio.create_task(self.kubectls()))
        tasks += [
            asyncio.create_task(self.watcher(cluster, i))
            for cluster in self.soak.clusters
            for i in range(self.settings.watches)
        ]
        progress = asyncio.create_task(self.progress())
        try:
            async with asyncio.timeout(self.settings.seconds + 120):
                await asyncio.gather(*tasks)
        finally:
            progress.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, progress, return_exceptions=True)
            # Connections cut meanwhile (a replica killed, a watch at its deadline) close
            # their TLS with a close_notify exchange their session does not wait for:
            # let it finish before the loop closes.
            await asyncio.sleep(1.0)

    async def progress(self) -> None:
        while True:
            await asyncio.sleep(60)
            last = {s.replica: s for s in self.samples}
            seen = ", ".join(
                f"{r}: {s.rss_kib / 1024:.0f} MiB {s.fds} fds" for r, s in sorted(last.items())
            )
            self.log(
                f"{self.now():6.1f} s: {len(self.outcomes)} answers, {self.events} events; {seen}"
            )


async def run_to_end(command: list[str], env: dict[str, str], expect: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, _ = await process.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    if process.returncode != 0:
        return f"exit {process.returncode}"
    return "ok" if expect in out.decode(errors="replace") else "bad output"


async def follow_logs(base: list[str], env: dict[str, str]) -> str:
    """``kubectl logs -f``: the initial lines and two followed ones, then it is stopped."""
    process = await asyncio.create_subprocess_exec(
        *base, "logs", "-f", POD, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        lines = [await process.stdout.readline() for _ in range(7)]
        if all(lines) and len(set(lines)) == 7:
            return "ok"
        await process.wait()
        return f"exit {process.returncode}" if process.returncode else "bad output"
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def port_forward(base: list[str], env: dict[str, str]) -> str:
    """``kubectl port-forward``: one HTTP request through the forwarded port."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *base, "port-forward", f"pod/{POD}", f"{port}:80", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        first = await process.stdout.readline()
        if b"Forwarding from" not in first:
            await process.wait()
            return f"exit {process.returncode}" if process.returncode else "bad output"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
        answer = await reader.read(65536)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return "ok" if f"hello from {POD} port 80".encode() in answer else "bad output"
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


# ---------------------------------------------------------------------------------------
# A run and its report


@dataclass
class Result:
    settings: Settings
    setup_s: float
    outcomes: list[Outcome]
    samples: list[Sample]
    events: int
    watch_starts: int
    kill_t: float | None
    killed: str | None
    killed_pid: int | None
    healthy_t: float | None
    rejoined_t: float | None

    @property
    def windows(self) -> list[Window]:
        if self.kill_t is None:
            return []
        return [Window(self.kill_t, self.kill_t + self.settings.window)]

    def failures(self) -> tuple[int, list[Outcome]]:
        return failures(self.outcomes, self.windows)

    def flatness(self) -> list[Flatness]:
        return judge(self.samples, self.windows[0] if self.windows else None)

    def to_json(self) -> dict[str, Any]:
        inside, outside = self.failures()
        return {
            "settings": asdict(self.settings),
            "setup_s": round(self.setup_s, 1),
            "answers": len(self.outcomes),
            "by_kind": tally(self.outcomes),
            "watch_events": self.events,
            "watch_starts": self.watch_starts,
            "restart": {
                "replica": self.killed,
                "pid": self.killed_pid,
                "kill_t": self.kill_t,
                "healthy_t": self.healthy_t,
                "rejoined_t": self.rejoined_t,
                "window": [asdict(w) for w in self.windows],
            },
            "failures_in_window": inside,
            "failures_outside_window": [asdict(o) for o in outside],
            "failures_in_window_list": [
                asdict(o)
                for o in self.outcomes
                if is_failure(o.outcome) and any(o.t in w for w in self.windows)
            ],
            "flatness": [
                {**asdict(f), "rss_growth_kib": f.rss_growth_kib, "fds_growth": f.fds_growth}
                for f in self.flatness()
            ],
            "samples": [asdict(s) for s in self.samples],
        }

    def report(self) -> list[str]:
        inside, outside = self.failures()
        lines = [
            f"{len(self.outcomes)} answers in {self.settings.seconds:.0f} s "
            f"({self.settings.clusters} clusters, {self.settings.replicas} replicas; "
            f"set-up took {self.setup_s:.0f} s); {self.events} watch events over "
            f"{self.watch_starts} watch starts",
        ]
        for kind, counts in tally(self.outcomes).items():
            lines.append(f"  {kind:20} " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
        if self.kill_t is not None:
            lines.append(
                f"restart: {self.killed} killed at {self.kill_t:.1f} s, healthy at "
                f"{self.healthy_t or float('nan'):.1f} s, every agent back at "
                f"{self.rejoined_t or float('nan'):.1f} s; {inside} failures within "
                f"{self.settings.window:.0f} s of the kill"
            )
        lines.append(f"failures outside the window: {len(outside)}")
        lines += [f"  {o.t:.1f} s {o.kind}: {o.outcome}" for o in outside[:50]]
        lines.append("flat after warm-up (median of the second third -> of the last third):")
        lines += ["  " + describe(f) for f in self.flatness()]
        return lines


def run(tmp: Path, settings: Settings, log: Any = print) -> Result:
    kubectl("1.32")  # missing: stop (pytest: skip, or fail in CI) before anything starts
    soak = start(tmp, settings, log)
    log(f"set-up: {soak.setup_s:.0f} s; traffic for {settings.seconds:.0f} s")
    try:
        traffic = Traffic(soak, settings, log)
        asyncio.run(traffic.run())
    finally:
        soak.stop()
    return Result(
        settings, soak.setup_s, traffic.outcomes, traffic.samples, traffic.events,
        traffic.watch_starts, traffic.kill_t, traffic.killed, traffic.killed_pid,
        traffic.healthy_t, traffic.rejoined_t,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------
# The figure (matplotlib: the "bench" extra, pyproject.toml)


def plot(data: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = [Sample(**s) for s in data["samples"]]
    restart = data["restart"]
    settings = data["settings"]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5))
    colours: dict[str, str] = {}
    for (replica, pid), life in lives(samples).items():
        colour = colours.setdefault(replica, f"C{len(colours)}")
        minutes = [s.t / 60 for s in life]
        label = f"{replica}" + (" (killed)" if pid == restart["pid"] else "")
        if replica == restart["replica"] and pid != restart["pid"]:
            label = f"{replica} (restarted)"
        style = ":" if pid == restart["pid"] else "-"
        top.plot(minutes, [s.rss_kib / 1024 for s in life], style, color=colour, label=label)
        bottom.plot(minutes, [s.fds for s in life], style, color=colour, label=label)
    for axis in (top, bottom):
        if restart["kill_t"] is not None:
            kill = restart["kill_t"] / 60
            axis.axvspan(kill, kill + settings["window"] / 60, color="red", alpha=0.12)
            axis.axvline(kill, color="red", linewidth=0.8)
        axis.axvspan(0, settings["seconds"] / 180, color="grey", alpha=0.1)
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)
    top.set_ylabel("RSS (MiB)")
    bottom.set_ylabel("open descriptors")
    bottom.set_xlabel("minutes (grey: warm-up; red: kill -9 of a replica and the window)")
    top.legend(loc="lower right", fontsize=8)
    top.set_title(
        f"herdgate soak: {settings['replicas']} replicas, {settings['clusters']} clusters, "
        f"{data['answers']} answers"
    )
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clusters", type=int, default=20)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--rate", type=float, default=30.0, help="GET/LIST a second, all together")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--write-rate", type=float, default=2.0)
    p.add_argument("--watches", type=int, default=2, help="watches per cluster")
    p.add_argument("--kubectl-every", type=float, default=3.0)
    p.add_argument("--sample", type=float, default=5.0, help="seconds between readings")
    p.add_argument("--window", type=float, default=10.0, help="failures allowed after the kill")
    p.add_argument("--out", type=Path, help="write the run's figures here (JSON)")
    p.add_argument("--png", type=Path, help="draw RSS and descriptors over time here")
    p.add_argument("--plot", type=Path, metavar="JSON", help="only draw an earlier run's --out")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    args = p.parse_args(argv)
    if args.plot and not args.png:
        p.error("--plot wants --png")
    if args.png:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            p.error("--png needs matplotlib: pip install -e '.[bench]'")
    return args


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="herdgate-soak-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.plot:
        plot(json.loads(args.plot.read_text()), args.png)
        print(f"wrote {args.png}")
        return 0
    from bench.watch_backend import raise_nofile

    raise_nofile()
    settings = Settings(
        seconds=args.minutes * 60, clusters=args.clusters, replicas=args.replicas,
        rate=args.rate, workers=args.workers, write_rate=args.write_rate,
        watches=args.watches, kubectl_every=args.kubectl_every, sample=args.sample,
        window=args.window,
    )  # fmt: skip
    lock = threading.Lock()

    def log(line: str) -> None:
        with lock:
            print(line, flush=True)

    with workdir(args.keep) as tmp:
        result = run(tmp, settings, log)
    for line in result.report():
        print(line)
    data = result.to_json()
    if args.out:
        args.out.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.out}")
    if args.png:
        plot(data, args.png)
        print(f"wrote {args.png}")
    _, outside = result.failures()
    return 1 if outside else 0


if __name__ == "__main__":
    sys.exit(main())

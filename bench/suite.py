"""The suite's phases: each starts its own processes, measures, and stops them.

1. ``http_paths``: figures 1-3 (nginx backend, nginx proxy, gateway + one agent, wrk).
2. ``watches``: figure 4 (watch backend, a fresh gateway, one agent, the watch client).
3. ``agents``: figures 5-6 (a fresh gateway, N in-process agents in a few processes,
   idle memory and CPU, then a gateway restart and the reconnection).

Every phase is bounded in time, uses 127.0.0.1 only, and stops what it started even
when it fails (``contextlib.ExitStack``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import nginx, profile
from bench.herdgate import (
    AGENT_BACKEND_TOKEN,
    backend_kubeconfig,
    connected_times,
    create_cluster,
    member_token,
    registration,
    start_agent,
    start_gateway,
    stopping_steps,
)
from bench.nginx import Certs
from bench.procstats import CpuMeter, rss_kib, tree_rss_kib
from bench.profile import Profile
from bench.rounds import BASELINE, RoundsResult, Target, run_rounds, scenarios
from config import native
from tests.integration.env import REPO_ROOT, Agent, Api, Gateway, free_port, wait_until

Log = Callable[[str], None]
KUBECTL_HEADERS = {
    "Accept": "application/json",
    "User-Agent": "kubectl/v1.32.0 (linux/amd64) kubernetes/bench",
}


def _get(url: str, token: str = "", timeout: float = 30) -> tuple[int, bytes]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url)  # noqa: S310 - https to 127.0.0.1 only
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, context=ctx, timeout=timeout) as resp:  # noqa: S310
        return int(resp.status), resp.read()


_GC_COLLECTIONS = re.compile(r'^python_gc_collections_total\{generation="(\d)"\} ([0-9.e+]+)$')


def gc_collections(url: str, token: str) -> dict[str, int]:
    """A process's garbage collections so far, per generation, from its ``/metrics``."""
    try:
        _, body = _get(f"{url}/metrics", token, timeout=10)
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in body.decode(errors="replace").splitlines():
        match = _GC_COLLECTIONS.match(line)
        if match:
            out[match.group(1)] = int(float(match.group(2)))
    return out


def _stop_process(process: subprocess.Popen[Any], timeout: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# -- figures 1-3 --------------------------------------------------------------------------


@dataclass
class HttpResult:
    rounds: RoundsResult
    seconds: float
    list_bytes: int
    profile: dict[str, Profile] = field(default_factory=dict)
    """py-spy: "gateway c64", "agent bulk" ... -> ("self: f" or "incl: f", % of samples)."""


@dataclass
class Checkout:
    """Another revision of the code, in a git worktree (``--baseline``)."""

    repo: Path
    path: Path
    commit: str

    def remove(self) -> None:
        subprocess.run(
            ["git", "-C", str(self.repo), "worktree", "remove", "--force", str(self.path)],
            capture_output=True, check=False,
        )  # fmt: skip


def checkout(repo: Path, rev: str, path: Path) -> Checkout:
    subprocess.run(
        ["git", "-C", str(repo), "worktree", "add", "--detach", str(path), rev],
        capture_output=True, check=True,
    )  # fmt: skip
    commit = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if (path / "config" / "native.py").is_file() and native.can_compile() is None:
        # Compiled like the working tree (if that revision has the compiled build), so
        # that an A/B compares code, not compiled against interpreted (~90 s).
        subprocess.run(
            [sys.executable, "-m", "config.native", "build"],
            cwd=path, capture_output=True, check=True,
        )  # fmt: skip
    return Checkout(repo, path, commit)


@dataclass
class Herd:
    """A gateway and one agent for one cluster, and a member's kubeconfig token."""

    gateway: Gateway
    agent: Agent
    cluster_id: str
    token: str

    @property
    def pids(self) -> dict[str, int]:
        assert self.gateway.process is not None and self.agent.process is not None
        return {"gateway": self.gateway.process.pid, "agent": self.agent.process.pid}


def start_herd(
    stack: contextlib.ExitStack,
    tmp: Path,
    certs: Certs,
    backend_url: str,
    name: str,
    max_streams: int | None = None,
    code: Path = REPO_ROOT,
    gateway_env: dict[str, str] | None = None,
) -> Herd:
    """``gateway-<name>`` and ``agent-<name>`` (running the code in ``code``), the agent
    pointed at ``backend_url``; stopped when ``stack`` closes."""
    gateway = Gateway(
        tmp / f"gateway-{name}",
        free_port(),
        tmp / f"gateway-{name}.log",
        cwd=code,
        extra_env=dict(gateway_env or {}),
    ).start(timeout=60)
    stack.callback(gateway.stop)
    admin = gateway.admin()
    cluster_id = create_cluster(admin, name)
    kubeconfig = backend_kubeconfig(
        tmp / f"agent-{name}.kubeconfig", backend_url, certs.ca, AGENT_BACKEND_TOKEN
    )
    agent = start_agent(
        tmp, admin, cluster_id, kubeconfig, f"agent-{name}", max_streams=max_streams, cwd=code
    )
    stack.callback(agent.stop)
    return Herd(gateway, agent, cluster_id, member_token(gateway, admin, cluster_id))


def start_backend(
    stack: contextlib.ExitStack, tmp: Path, certs: Certs, module: str
) -> tuple[str, int]:
    """A stand-in API server (``python -m bench.<module>``) on a free port: URL and pid."""
    port = free_port()
    log_file = (tmp / f"{module}.log").open("wb")
    stack.callback(log_file.close)
    backend = subprocess.Popen(
        [sys.executable, "-m", f"bench.{module}", "--port", str(port),
         "--cert", str(certs.cert), "--key", str(certs.key)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log_file, text=True,
    )  # fmt: skip
    stack.callback(_stop_process, backend)
    assert backend.stdout is not None
    stack.callback(backend.stdout.close)
    if backend.stdout.readline().strip() != "ready":
        raise RuntimeError(f"bench.{module} did not start")
    return f"https://127.0.0.1:{port}", backend.pid


def http_paths(
    tmp: Path,
    certs: Certs,
    rounds: int,
    seconds: float,
    profile_s: float,
    log: Log,
    baseline: Checkout | None = None,
) -> HttpResult:
    small, big = nginx.write_payloads(tmp / "www")
    with contextlib.ExitStack() as stack:
        backend = nginx.backend(tmp / "nginx-backend", certs, small, big).start()
        stack.callback(backend.stop)
        proxy = nginx.proxy(tmp / "nginx-proxy", certs, backend.port).start()
        stack.callback(proxy.stop)
        herd = start_herd(stack, tmp, certs, backend.url, "http")
        gateway, cluster_id, token = herd.gateway, herd.cluster_id, herd.token
        assert gateway.process is not None
        extra: list[Target] = []
        if baseline is not None:
            base = start_herd(stack, tmp, certs, backend.url, "baseline", code=baseline.path)
            extra.append(
                Target(
                    BASELINE,
                    f"{base.gateway.url}/k8s/clusters/{base.cluster_id}",
                    {**base.pids, "backend": backend.pid},
                    token=base.token,
                )
            )
        targets = [
            Target("direct", backend.url, {"backend": backend.pid}),
            Target("nginx-proxy", proxy.url, {"proxy": proxy.pid, "backend": backend.pid}),
            Target(
                "herdgate",
                f"{gateway.url}/k8s/clusters/{cluster_id}",
                {**herd.pids, "backend": backend.pid},
            ),
            *extra,
        ]
        expected = small.read_bytes()
        for target in targets:
            status, body = _get(target.url_base + nginx.SMALL_PATH, target.token or token)
            if status != 200 or body != expected:
                raise RuntimeError(f"{target.name}: HTTP {status}, {len(body)} bytes")
        log(f"paths ready: {', '.join(t.name for t in targets)}; big list {big.stat().st_size:,} B")
        headers = {"Authorization": f"Bearer {token}", **KUBECTL_HEADERS}
        plan = scenarios(seconds, nginx.SMALL_PATH, nginx.LIST_PATH)
        result = HttpResult(
            run_rounds(
                targets,
                plan,
                rounds,
                headers,
                gateway.process.pid,
                lambda: nginx.accepted_connections(backend),
                log,
            ),
            seconds,
            big.stat().st_size,
        )
        if profile_s > 0:
            pids = herd.pids
            for name, path, conns in (("c64", nginx.SMALL_PATH, 64), ("bulk", nginx.LIST_PATH, 1)):
                log(f"py-spy on the gateway and the agent during {name}")
                found = profile.during_wrk(
                    targets[2].url_base + path, headers, conns, profile_s, pids, tmp
                )
                result.profile |= {f"{role} {name}": prof for role, prof in found.items()}
        return result


# -- figure 4 -----------------------------------------------------------------------------


@dataclass
class WatchResult:
    count: int
    opened: int
    failed: int
    open_s: float
    failures: list[str]
    gateway_rss_before_kib: int
    gateway_rss_after_kib: int
    agent_rss_before_kib: int
    agent_rss_after_kib: int
    rate: float
    seconds: float
    sent: int
    latency: dict[str, float]
    cpu_pct: dict[str, float]
    """Role -> % of one core while events flowed."""
    conn_kib: float = 0.0
    """Baseline: gateway RSS per idle keep-alive TLS connection (``GET /healthz``, no watch),
    measured on a gateway of its own."""
    churned_kib: float = 0.0
    """The same after ``CHURN_ROUNDS`` rounds of closing all and opening as many again."""
    http2: bool = False
    """The watches shared HTTP/2 connections (client-go's way) instead of one each."""
    connections: int = 0
    gc_during_events: dict[str, int] = field(default_factory=dict)
    """The gateway's garbage collections per generation while the events flowed
    (``python_gc_collections_total``): a full (generation 2) collection walks every
    watch's objects at once, a pause the events' tail would show."""

    @property
    def gateway_kib_per_watch(self) -> float:
        if not self.opened:
            return 0.0
        return (self.gateway_rss_after_kib - self.gateway_rss_before_kib) / self.opened

    @property
    def agent_kib_per_watch(self) -> float:
        if not self.opened:
            return 0.0
        return (self.agent_rss_after_kib - self.agent_rss_before_kib) / self.opened


class WatchClient:
    """``python -m bench.watches``: opens the connections, then measures on request."""

    def __init__(self, url: str, token: str, ca: Path, count: int, http2: bool = False) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.watches", "--url", url, "--token", token,
             "--ca", str(ca), "--count", str(count), "--concurrency", "64",
             *(["--http2"] if http2 else [])],
            cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def opened(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        result: dict[str, Any] = json.loads(self.process.stdout.readline() or "{}")
        if "opened" not in result:
            raise RuntimeError("the watch client failed while opening its connections")
        return result

    def start_measuring(self, seconds: float) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"measure {seconds:g}\n")
        self.process.stdin.flush()

    def latency(self) -> dict[str, float]:
        assert self.process.stdout is not None
        result: dict[str, float] = json.loads(self.process.stdout.readline() or "{}")
        return result

    def stop(self) -> None:
        _stop_process(self.process)


CHURN_ROUNDS = 3


def connection_cost(tmp: Path, count: int, log: Log) -> tuple[float, float]:
    """Gateway RSS per idle keep-alive TLS connection that made one ``GET /healthz``:
    on a fresh gateway, and after ``CHURN_ROUNDS`` more rounds of closing them all and
    opening as many again (both against the RSS before the first round)."""
    gateway = start_gateway(tmp, "gateway-conns")
    try:
        assert gateway.process is not None
        time.sleep(1.0)
        before = tree_rss_kib(gateway.process.pid)
        per_conn = churned = 0.0
        for number in range(1 + CHURN_ROUNDS):
            client = WatchClient(f"{gateway.url}/healthz", "-", gateway.ca_file, count)
            try:
                opened = max(1, int(client.opened()["opened"]))
                time.sleep(2.0)
                kib = (tree_rss_kib(gateway.process.pid) - before) / opened
                if number == 0:
                    per_conn = kib
                churned = kib
                client.start_measuring(0)
                client.latency()
            finally:
                client.stop()
            time.sleep(1.0)
    finally:
        gateway.stop()
    log(
        f"baseline: {per_conn:.1f} KiB of gateway RSS per idle TLS keep-alive connection;"
        f" {churned:.1f} KiB after {CHURN_ROUNDS} rounds of closing and reopening them"
    )
    return per_conn, churned


def watches(
    tmp: Path,
    certs: Certs,
    count: int,
    rate: float,
    seconds: float,
    log: Log,
    http2: bool = False,
) -> WatchResult:
    """Figure 4 over HTTP/1.1 (a TLS connection per watch, with the bare connection's
    cost measured first) or over HTTP/2 (``--per-connection`` watches per connection)."""
    conn_kib, churned_kib = (0.0, 0.0) if http2 else connection_cost(tmp, count, log)
    name = "watch-h2" if http2 else "watch"
    with contextlib.ExitStack() as stack:
        backend_url, backend_pid = start_backend(stack, tmp, certs, "watch_backend")
        # One user holds every watch: the per-user stream quota must let them all in.
        quota = {"HERDGATE_TUNNEL__MAX_STREAMS_PER_USER": str(count + 1024)}
        herd = start_herd(
            stack, tmp, certs, backend_url, name, max_streams=count + 1024, gateway_env=quota
        )
        gateway, cluster_id, token = herd.gateway, herd.cluster_id, herd.token
        gw_pid, agent_pid = herd.pids["gateway"], herd.pids["agent"]
        watch_url = (
            f"{gateway.url}/k8s/clusters/{cluster_id}"
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=0"
        )
        time.sleep(1.0)
        gw_before, agent_before = tree_rss_kib(gw_pid), rss_kib(agent_pid)
        client = WatchClient(watch_url, token, gateway.ca_file, count, http2)
        stack.callback(client.stop)
        opened = client.opened()
        log(
            f"watches ({'HTTP/2' if http2 else 'HTTP/1.1'}): {opened['opened']} open,"
            f" {opened['failed']} failed in {opened['open_s']} s {opened.get('failures') or ''}"
        )
        time.sleep(2.0)
        gw_after, agent_after = tree_rss_kib(gw_pid), rss_kib(agent_pid)
        _, stats = _get(f"{backend_url}/_bench/stats")
        log(f"watch backend sees {json.loads(stats)['watches']} watches")
        meter = CpuMeter(
            {
                "gateway": gw_pid,
                "agent": agent_pid,
                "backend": backend_pid,
                "client": client.process.pid,
            }
        )
        admin_token = str(gateway.admin().token)  # /metrics is for administrators
        gc_before = gc_collections(gateway.url, admin_token)
        with meter:
            client.start_measuring(seconds + 1.5)
            _get(f"{backend_url}/_bench/emit?rate={rate:g}&seconds={seconds:g}")
            latency = client.latency()
        gc_during = {
            generation: count - gc_before.get(generation, 0)
            for generation, count in gc_collections(gateway.url, admin_token).items()
        }
        log(f"watches: the gateway's garbage collections while events flowed: {gc_during}")
        _, stats = _get(f"{backend_url}/_bench/stats")
        usage = meter.usage
        assert usage is not None
        return WatchResult(
            count=count,
            opened=int(opened["opened"]),
            failed=int(opened["failed"]),
            open_s=float(opened["open_s"]),
            failures=list(opened.get("failures") or []),
            gateway_rss_before_kib=gw_before,
            gateway_rss_after_kib=gw_after,
            agent_rss_before_kib=agent_before,
            agent_rss_after_kib=agent_after,
            rate=rate,
            seconds=seconds,
            sent=int(json.loads(stats)["sent"]),
            latency=latency,
            cpu_pct={role: usage.pct(role) for role in usage.roles}
            | {"box": usage.box_busy_pct, "other": usage.foreign_pct},
            conn_kib=conn_kib,
            churned_kib=churned_kib,
            http2=http2,
            connections=int(opened.get("connections", opened["opened"])),
            gc_during_events=gc_during,
        )
    raise AssertionError("unreachable")  # pragma: no cover


# -- figures 5 and 6 ------------------------------------------------------------------------


class AgentProcess:
    """One ``python -m bench.agents`` process and the events it reports."""

    def __init__(self, spec_file: Path, log_file: Path) -> None:
        log = log_file.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.agents", "--spec", str(spec_file)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
        )  # fmt: skip
        log.close()
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                with self._lock:
                    self.events.append(event)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def stop(self) -> None:
        _stop_process(self.process, timeout=20)


@dataclass
class AgentsResult:
    count: int
    processes: int
    connect_s: float
    gateway_rss_before_kib: int
    gateway_rss_after_kib: int
    idle_s: float
    idle_cpu_pct: dict[str, float]
    idle_thirds_pct: list[float]
    """The gateway's idle CPU in each third of the idle window (% of one core)."""
    stop_s: float
    """SIGTERM to the old gateway's exit (it sends every agent GOAWAY)."""
    stop_steps: list[str]
    """The old gateway's "stopping: ... took N s" log lines."""
    start_s: float
    """Start of the new gateway to its first healthy answer."""
    back: int
    all_back_s: float
    """From SIGTERM to the old gateway until the last agent was connected again."""
    all_back_after_ready_s: float
    per_second: list[int] = field(default_factory=list)
    """Tunnels accepted per second after the restart, from SIGTERM."""
    per_second_source: str = "gateway log"
    """Where ``per_second`` comes from: the gateway's "agent connected" lines, or the agents."""
    retry_delays: list[float] = field(default_factory=list)
    failed_after_ready: int = 0
    """Agent retries that started after the new gateway was healthy (failed handshakes)."""
    points: list[dict[str, float]] = field(default_factory=list)
    """The growth curve: ``{"tunnels", "rss_kib", "cpu_pct"}`` (gateway, idle) per step."""
    held: int = -1
    """Tunnels held when a step could not connect all its agents (-1: every step did)."""

    @property
    def kib_per_tunnel(self) -> float:
        tunnels = self.held if self.held >= 0 else self.count
        if not tunnels:
            return 0.0
        return (self.gateway_rss_after_kib - self.gateway_rss_before_kib) / tunnels

    @property
    def peak_per_s(self) -> int:
        return max(self.per_second, default=0)


def _create_clusters(admin: Api, count: int, log: Log) -> list[str]:
    def one(index: int) -> str:
        cluster_id = create_cluster(admin, f"agent-{index:05d}")
        return registration(admin, cluster_id)[0]

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(one, range(count)))
    log(f"agents: {count} clusters and registration tokens in {time.monotonic() - started:.1f} s")
    return tokens


def _held(procs: list[AgentProcess]) -> set[tuple[int, int]]:
    """The agents whose tunnel is up now (their last "up"/"down" event is "up")."""
    state: dict[tuple[int, int], bool] = {}
    for number, proc in enumerate(procs):
        for event in proc.snapshot():
            if event["e"] in ("up", "down"):
                state[(number, int(event.get("a", -1)))] = event["e"] == "up"
    return {key for key, up in state.items() if up}


def _ups(procs: list[AgentProcess], since: float) -> list[float]:
    """Each agent's first "up" at or after ``since``, sorted."""
    first: dict[tuple[int, int], float] = {}
    for number, proc in enumerate(procs):
        for event in proc.snapshot():
            if event["e"] == "up" and event["t"] >= since:
                key = (number, int(event.get("a", -1)))
                first[key] = min(first.get(key, event["t"]), event["t"])
    return sorted(first.values())


def agents(
    tmp: Path,
    certs: Certs,
    count: int,
    processes: int,
    idle_s: float,
    log: Log,
    steps: list[int] | None = None,
) -> AgentsResult:
    """Figures 5-6. ``steps``: agent counts (ascending, the last ``count``) at which the
    gateway's RSS and idle CPU are read, for the growth curve; the agents of each step are
    added in processes of their own (about ``count / processes`` agents each)."""
    counts = sorted({*(s for s in steps or [] if 0 < s < count), count})
    per_process = max(1, -(-count // processes))
    with contextlib.ExitStack() as stack:
        # Every agent here dials from 127.0.0.1, where in production each comes from its
        # own cluster's address: the per-address connection limit (1,024) is raised above
        # the agent count for this gateway only.
        gateway = Gateway(tmp / "gateway-agents", free_port(), tmp / "gateway-agents.log")
        gateway.extra_env["HERDGATE_LIMITS__PER_ADDRESS"] = str(count + 1024)
        gateway.start(timeout=60)
        stack.callback(gateway.stop)
        admin = gateway.admin()
        tokens = _create_clusters(admin, count, log)
        # Agents need an API server address; nothing is ever requested through these tunnels.
        kubeconfig = backend_kubeconfig(
            tmp / "agents.kubeconfig", "https://127.0.0.1:9", certs.ca, AGENT_BACKEND_TOKEN
        )
        assert gateway.process is not None
        time.sleep(1.0)
        rss_before = tree_rss_kib(gateway.process.pid)
        cpu_before = _idle_cpu(gateway, [], idle_s / 3)
        points = [{"tunnels": 0, "rss_kib": rss_before, "cpu_pct": cpu_before[0]["gateway"]}]
        log(f"agents: 0 tunnels, gateway RSS {rss_before / 1024:.1f} MB,"
            f" idle CPU {cpu_before[0]['gateway']:.2f} %")  # fmt: skip
        procs: list[AgentProcess] = []
        started = time.time()
        up = 0
        for target in counts:
            batch = tokens[up:target]
            parts = max(1, -(-len(batch) // per_process))
            step_started = time.time()
            for part in range(parts):
                spec = tmp / f"agents-{len(procs)}.json"
                spec.write_text(json.dumps({
                    "server": gateway.url, "ca_file": str(gateway.ca_file),
                    "kubeconfig": str(kubeconfig), "tokens": batch[part::parts],
                    "ramp_per_s": 400 / parts,
                }))  # fmt: skip
                proc = AgentProcess(spec, tmp / f"agents-{len(procs)}.log")
                stack.callback(proc.stop)
                procs.append(proc)
            try:
                wait_until(lambda t=target: len(_held(procs)) >= t, 120 + target / 10,
                           "agents did not all connect", interval=0.2)  # fmt: skip
            except TimeoutError:
                # The gateway could not take them all: record what it holds, draw the
                # curve so far, and skip the restart.
                held = len(_held(procs))
                log(f"agents: only {held}/{target} tunnels held after"
                    f" {time.time() - step_started:.0f} s; stopping here")  # fmt: skip
                rss = tree_rss_kib(gateway.process.pid)
                idle_cpu, slices = _idle_cpu(gateway, procs, max(5.0, idle_s / 2))
                points.append({"tunnels": held, "rss_kib": rss, "cpu_pct": idle_cpu["gateway"],
                               "incomplete": 1, "wanted": target})  # fmt: skip
                return AgentsResult(
                    count=target, processes=len(procs), connect_s=0.0,
                    gateway_rss_before_kib=rss_before, gateway_rss_after_kib=rss,
                    idle_s=idle_s, idle_cpu_pct=idle_cpu, idle_thirds_pct=slices,
                    stop_s=0.0, start_s=0.0, back=0, all_back_s=0.0, all_back_after_ready_s=0.0,
                    points=points, held=held, stop_steps=[],
                )  # fmt: skip
            connect_s = max(_ups(procs, started)) - step_started
            up = target
            log(f"agents: {target} tunnels up ({connect_s:.1f} s for this step,"
                f" {len(procs)} processes)")  # fmt: skip
            # Let the connection burst settle (the gateway records each agent's connection in
            # its store and reads the change feed back) before memory and idle CPU are read.
            time.sleep(min(10.0, max(3.0, idle_s / 3)))
            rss = tree_rss_kib(gateway.process.pid)
            window = idle_s if target == count else max(5.0, idle_s / 2)
            idle_cpu, slices = _idle_cpu(gateway, procs, window)
            points.append({"tunnels": target, "rss_kib": rss, "cpu_pct": idle_cpu["gateway"]})
            log(
                f"agents: {target} tunnels, gateway RSS {rss / 1024:.1f} MB"
                f" ({(rss - rss_before) / target:.1f} KiB per tunnel), idle CPU"
                f" {idle_cpu['gateway']:.2f} % of a core over {window:g} s"
                f" (thirds: {', '.join(f'{x:.2f}' for x in slices)})"
            )
        connect_s = max(_ups(procs, started)) - started
        restart = _restart(gateway, procs, count, log)
        return AgentsResult(
            count=count,
            processes=len(procs),
            connect_s=connect_s,
            gateway_rss_before_kib=rss_before,
            gateway_rss_after_kib=int(points[-1]["rss_kib"]),
            idle_s=idle_s,
            idle_cpu_pct=idle_cpu,
            idle_thirds_pct=slices,
            points=points,
            **restart,
        )
    raise AssertionError("unreachable")  # pragma: no cover


def _idle_cpu(
    gateway: Gateway, procs: list[AgentProcess], seconds: float
) -> tuple[dict[str, float], list[float]]:
    """CPU (% of a core) of the gateway and each agent process over ``seconds``, and the
    gateway's in each third of it."""
    assert gateway.process is not None
    roles = {"gateway": gateway.process.pid}
    roles |= {f"agents-{i}": p.process.pid for i, p in enumerate(procs)}
    meter = CpuMeter(roles)
    slices: list[float] = []
    with meter:
        for _ in range(3):
            with CpuMeter({"gateway": gateway.process.pid}) as part:
                time.sleep(seconds / 3)
            assert part.usage is not None
            slices.append(part.usage.pct("gateway"))
    usage = meter.usage
    assert usage is not None
    idle_cpu = {role: usage.pct(role) for role in usage.roles}
    idle_cpu |= {"box": usage.box_busy_pct, "other": usage.foreign_pct}
    return idle_cpu, slices


def _restart(gateway: Gateway, procs: list[AgentProcess], count: int, log: Log) -> dict[str, Any]:
    t_stop = time.time()
    assert gateway.process is not None
    _stop_process(gateway.process, timeout=45)  # the unit's TimeoutStopSec
    gateway.process = None
    t_exit = time.time()
    steps = stopping_steps(gateway.log_file, since=t_stop)  # (the new gateway starts a new log)
    gateway.start(timeout=60)
    t_ready = time.time()
    log(f"agents: gateway restarted (stop {t_exit - t_stop:.1f} s, start {t_ready - t_exit:.1f} s)")
    for step in steps:
        log(f"agents: the old gateway's {step}")
    try:
        wait_until(lambda: len(_ups(procs, t_stop)) >= count, 120,
                   "agents did not all come back", interval=0.2)  # fmt: skip
    except TimeoutError:
        log(f"agents: only {len(_ups(procs, t_stop))}/{count} back after 120 s")
    ups = _ups(procs, t_stop)
    time.sleep(1.0)  # the gateway logs "agent connected" a little after the agent sees it up
    accepted = connected_times(gateway.log_file, since=t_stop)
    source = "gateway log"
    if len(accepted) < len(ups) // 2:  # the log line changed: count on the agents' side
        accepted, source = ups, "agents"
    per_second = [0] * (int(max(accepted, default=t_stop) - t_stop) + 1)
    for when in accepted:
        per_second[int(when - t_stop)] += 1
    retries = [e for p in procs for e in p.snapshot() if e["e"] == "retry" and e["t"] >= t_stop]
    last = max(ups, default=t_stop)
    log(f"agents: {len(ups)}/{count} back {last - t_stop:.1f} s after SIGTERM; "
        f"peak {max(per_second, default=0)} tunnels/s")  # fmt: skip
    return {
        "stop_s": t_exit - t_stop,
        "stop_steps": steps,
        "start_s": t_ready - t_exit,
        "back": len(ups),
        "all_back_s": last - t_stop,
        "all_back_after_ready_s": last - t_ready,
        "per_second": per_second,
        "per_second_source": source,
        "retry_delays": sorted(float(e["delay"]) for e in retries),
        "failed_after_ready": sum(1 for e in retries if e["t"] >= t_ready),
    }


def to_json(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value


EXEC_PATH = "/api/v1/namespaces/default/pods/bench/exec"


@dataclass
class ExecResult:
    sessions: int
    echoes: int
    bulk_mb: float
    runs: list[dict[str, Any]] = field(default_factory=list)
    """One per round and path: ``{"round", "path", "exec_setup_p50_ms", "setup_p50_ms", ...
    "bulk_mb_per_s", "bulk_cpu_ms_per_mb": {role: ms}}`` (the bulk run measured alone)."""

    def values(self, path: str, key: str) -> list[float]:
        return [float(r[key]) for r in self.runs if r["path"] == path]


def exec_paths(
    tmp: Path, certs: Certs, rounds: int, sessions: int, echoes: int, bulk_mb: float, log: Log
) -> ExecResult:
    """kubectl-shaped exec sessions, direct to a stand-in exec endpoint and through herdgate
    (gateway, tunnel, agent), interleaved in rounds."""
    result = ExecResult(sessions, echoes, bulk_mb)
    with contextlib.ExitStack() as stack:
        backend_url, backend_pid = start_backend(stack, tmp, certs, "exec_backend")
        herd = start_herd(stack, tmp, certs, backend_url, "exec")
        gateway, cluster_id, token = herd.gateway, herd.cluster_id, herd.token
        paths = [
            ("direct", backend_url + EXEC_PATH, AGENT_BACKEND_TOKEN, certs.ca),
            ("herdgate", f"{gateway.url}/k8s/clusters/{cluster_id}{EXEC_PATH}", token,
             gateway.ca_file),
        ]  # fmt: skip
        pids = {**herd.pids, "backend": backend_pid}
        for number in range(rounds):
            order = paths[number % 2 :] + paths[: number % 2]
            for name, url, bearer, ca in order:
                run = _exec_client(name, url, bearer, ca, sessions, echoes, 0.0)
                with CpuMeter(pids) as meter:
                    bulk = _exec_client(name, url, bearer, ca, 0, 0, bulk_mb)
                assert meter.usage is not None
                run["bulk_mb_per_s"] = bulk["bulk_mb_per_s"]
                run["bulk_cpu_ms_per_mb"] = {
                    role: 1e3 * meter.usage.roles.get(role, 0.0) / bulk["bulk_mb"] for role in pids
                }
                run.update(round=number + 1, path=name)
                result.runs.append(run)
                log(
                    f"  exec round {number + 1}/{rounds} {name:<9} kubectl-shaped setup p50"
                    f" {run['exec_setup_p50_ms']:.2f} ms, upgrade alone"
                    f" {run['setup_p50_ms']:.2f} ms, echo p50 {run['echo_p50_ms']:.3f} ms"
                    f" p99 {run['echo_p99_ms']:.3f} ms, {run['bulk_mb_per_s']:.0f} MB/s"
                )
    return result


def _exec_client(
    name: str, url: str, bearer: str, ca: Path, sessions: int, echoes: int, bulk_mb: float
) -> dict[str, Any]:
    """One run of ``bench.exec_client``: its JSON."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.exec_client", "--url", url, "--token", bearer,
         "--ca", str(ca), "--sessions", str(sessions), "--echoes", str(echoes),
         "--bulk-mb", str(bulk_mb), "--timeout", "300"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=330, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"exec client on {name}: {out.stderr[-2000:]}")
    run: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return run


def setup_tmp(base: Path | None) -> Path:
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="herdgate-bench-", dir=base))
    os.chmod(tmp, 0o700)
    return tmp

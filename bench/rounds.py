"""Figures 1-3: the same requests over three paths, interleaved in rounds.

Paths: (a) ``direct`` to the nginx backend over TLS; (b) ``nginx-proxy``, the reference
TLS reverse proxy in front of it; (c) ``herdgate``, kubectl-shaped requests through the
gateway, the tunnel and the agent to the same backend. A round runs every scenario on
every path back to back (the path order rotates from round to round), so ratios are
taken between runs minutes apart at most, and the medians over rounds are reported.

Scenarios: ``c64`` (2 KB GET, 64 connections), ``c1`` (2 KB GET, 1 connection),
``bulk`` (the 100 MB list, one stream; the gateway's RSS is sampled meanwhile), all with
wrk over HTTP/1.1; and ``h2c64`` (2 KB GET, 64 streams in flight on 4 HTTP/2 connections,
with h2load: how kubectl and client-go talk to a server that offers ``h2``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import h2load, wrk
from bench.procstats import CpuMeter, RssSampler, reset_peak, vm_hwm_kib


@dataclass(frozen=True)
class Target:
    """One path: the URL, and which processes do its work (role -> pid)."""

    name: str
    url_base: str
    roles: dict[str, int]
    token: str = ""
    """Its own bearer token (the baseline gateway issues its own); else the run's."""

    def headers(self, common: dict[str, str]) -> dict[str, str]:
        return {**common, "Authorization": f"Bearer {self.token}"} if self.token else common


BASELINE = "baseline"
"""The fourth path of ``--baseline REV``: herdgate at another revision."""


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    connections: int
    threads: int
    seconds: float
    streams: int = 0
    """HTTP/2 streams per connection (``h2load``); 0: HTTP/1.1 with wrk."""

    def run(self, url: str, headers: dict[str, str], seconds: float) -> wrk.WrkResult:
        if self.streams:
            return h2load.run(
                url + self.path,
                connections=self.connections,
                streams=self.streams,
                seconds=seconds,
                headers=headers,
            )
        return wrk.run(url + self.path, connections=self.connections, seconds=seconds,
                       headers=headers, threads=self.threads, timeout_s=30)  # fmt: skip


@dataclass
class Run:
    round: int
    scenario: str
    target: str
    rps: float
    mb_per_s: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    wall_s: float
    cpu_s: dict[str, float]
    """Role -> CPU seconds during the run (wrk included)."""
    box_busy_pct: float
    foreign_pct: float
    steal_pct: float
    gateway_rss_start_kib: int = 0
    gateway_rss_peak_kib: int = 0
    backend_conns: int = 0
    """Connections the backend accepted during the run (TLS handshakes it served)."""

    def cpu_pct(self, role: str) -> float:
        return 100.0 * self.cpu_s.get(role, 0.0) / self.wall_s if self.wall_s else 0.0

    def cpu_us_per_request(self, role: str) -> float:
        return 1e6 * self.cpu_s.get(role, 0.0) / self.requests if self.requests else 0.0


@dataclass
class RoundsResult:
    runs: list[Run] = field(default_factory=list)

    def select(self, scenario: str, target: str) -> list[Run]:
        return [r for r in self.runs if r.scenario == scenario and r.target == target]

    def per_round(
        self, scenario: str, value: Callable[[Run], float], a: str, b: str
    ) -> list[float]:
        """``value(a) / value(b)`` within each round where both ran."""
        out = []
        for number in sorted({r.round for r in self.runs}):
            ra = [r for r in self.select(scenario, a) if r.round == number]
            rb = [r for r in self.select(scenario, b) if r.round == number]
            if ra and rb and value(rb[0]):
                out.append(value(ra[0]) / value(rb[0]))
        return out

    def per_round_diff(
        self, scenario: str, value: Callable[[Run], float], a: str, b: str
    ) -> list[float]:
        """``value(a) - value(b)`` within each round."""
        out = []
        for number in sorted({r.round for r in self.runs}):
            ra = [r for r in self.select(scenario, a) if r.round == number]
            rb = [r for r in self.select(scenario, b) if r.round == number]
            if ra and rb:
                out.append(value(ra[0]) - value(rb[0]))
        return out

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.runs]


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max); zeros when empty."""
    if not values:
        return 0.0, 0.0, 0.0
    return statistics.median(values), min(values), max(values)


def scenarios(seconds: float, small_path: str, list_path: str) -> list[Scenario]:
    return [
        Scenario("c64", small_path, 64, 2, seconds),
        Scenario("c1", small_path, 1, 1, seconds),
        Scenario("bulk", list_path, 1, 1, seconds),
        # kubectl's and client-go's way: HTTP/2, 4 connections of 16 streams in flight
        Scenario("h2c64", small_path, 4, 1, seconds, streams=16),
    ]


def run_rounds(
    targets: Sequence[Target],
    plan: Sequence[Scenario],
    rounds: int,
    headers: dict[str, str],
    gateway_pid: int,
    backend_accepts: Callable[[], int],
    log: Callable[[str], None] = print,
) -> RoundsResult:
    result = RoundsResult()
    # Warm-up: connections, TLS session caches, the gateway's stream pool, page cache.
    for target in targets:
        for scenario in plan:
            scenario.run(target.url_base, target.headers(headers), 1)
    for number in range(rounds):
        shift = number % len(targets)
        order = list(targets[shift:]) + list(targets[:shift])
        for scenario in plan:
            for target in order:
                before = backend_accepts()
                run = _one(number, scenario, target, headers, gateway_pid)
                # The status request itself is one connection.
                run.backend_conns = backend_accepts() - before - 1
                result.runs.append(run)
                log(
                    f"  round {number + 1}/{rounds} {scenario.name:<5} {target.name:<12}"
                    f" {run.rps:>9.0f} req/s {run.mb_per_s:>8.1f} MB/s"
                    f" p50 {run.p50_ms:7.3f} p99 {run.p99_ms:7.3f} ms"
                    f"  errors {run.errors}  backend conns {run.backend_conns}"
                    f"  foreign CPU {run.foreign_pct:4.0f} %"
                )
    return result


def _one(
    number: int, scenario: Scenario, target: Target, headers: dict[str, str], gateway_pid: int
) -> Run:
    sample_rss = scenario.name == "bulk" and "gateway" in target.roles
    gateway_pid = target.roles.get("gateway", gateway_pid)
    if sample_rss:
        reset_peak(gateway_pid)
    sampler = RssSampler(gateway_pid) if sample_rss else None
    meter = CpuMeter(target.roles)
    with meter:
        if sampler is not None:
            sampler.__enter__()
        try:
            res = scenario.run(target.url_base, target.headers(headers), scenario.seconds)
        finally:
            if sampler is not None:
                sampler.__exit__()
    usage = meter.usage
    assert usage is not None
    usage.extra["wrk"] = res.cpu_s
    cpu = dict(usage.roles)
    cpu["wrk"] = res.cpu_s
    run = Run(
        round=number + 1,
        scenario=scenario.name,
        target=target.name,
        rps=res.rps,
        mb_per_s=res.mb_per_s,
        requests=res.requests,
        errors=res.errors,
        p50_ms=res.p50_ms,
        p99_ms=res.p99_ms,
        max_ms=res.max_ms,
        wall_s=usage.wall_s,
        cpu_s=cpu,
        box_busy_pct=usage.box_busy_pct,
        foreign_pct=usage.foreign_pct,
        steal_pct=usage.steal_pct,
    )
    if sampler is not None:
        run.gateway_rss_start_kib = sampler.start_kib
        run.gateway_rss_peak_kib = max(sampler.peak_kib, vm_hwm_kib(gateway_pid))
    return run

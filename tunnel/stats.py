"""What the agent counts, in plain numbers (no prometheus call on the data path):
tunnels, dials, reconnects, streams, bytes both ways and the API server's latency.
``tunnel.probes`` turns them into Prometheus metrics at scrape time."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass
class Histogram:
    """Cumulative-at-scrape histogram in plain ints (cheap to observe)."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


@dataclass
class AgentStats:
    """What the agent counts; read by :class:`StatsCollector` at scrape time."""

    tunnels: int = 0
    wanted: int = 1
    dials: dict[str, int] = field(default_factory=lambda: {"new": 0, "duplicate": 0, "failed": 0})
    direct_dials: dict[str, int] = field(
        default_factory=lambda: {"new": 0, "duplicate": 0, "failed": 0}
    )
    """Dials of one replica at its own address (``tunnel.replica_list``)."""
    reconnects: int = 0
    streams_total: int = 0
    streams_open: int = 0
    stream_failures: int = 0
    h2_connections: int = 0
    """HTTP/2 connections open to the API server (``tunnel.h2upstream``)."""
    h2_streams: int = 0
    """HTTP/2 streams opened to the API server: relayed requests and the agent's own."""
    bytes_to_apiserver: int = 0
    bytes_from_apiserver: int = 0
    latency: Histogram = field(default_factory=Histogram)

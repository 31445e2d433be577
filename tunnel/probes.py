"""The agent's opt-in health and metrics listener (``health_listen``).

``/healthz``: 200 while the process runs its loop (the kubelet's liveness probe).
``/readyz``: 200 while at least one tunnel to the gateway is up, 503 otherwise (the
readiness probe; a pod without a tunnel is not ready). ``/metrics``: Prometheus text,
from :class:`AgentStats`, plain counters the agent and the relay keep (no prometheus
call on the data path; the collector reads them at scrape time):

* ``herdgate_agent_tunnels`` (gauge) and ``herdgate_agent_gateway_replicas`` (gauge);
* ``herdgate_agent_dials_total{outcome="new|duplicate|failed"}`` (through the gateway's
  address) and ``herdgate_agent_direct_dials_total{outcome=...}`` (one replica at its own
  address, ``tunnel.replica_list``);
* ``herdgate_agent_reconnects_total``: tunnels established after one was lost;
* ``herdgate_agent_streams_total``, ``herdgate_agent_streams_open``,
  ``herdgate_agent_stream_failures_total`` (the API server unreachable);
* ``herdgate_agent_bytes_total{direction="to_apiserver|from_apiserver"}``: body and
  relayed bytes (over HTTP/2: request bodies and answers' DATA, the agent's own requests
  included);
* ``herdgate_agent_apiserver_http2_connections`` (gauge): HTTP/2 connections open to the
  API server (``apiserver_http2``, ``tunnel.h2upstream``), and
  ``herdgate_agent_apiserver_http2_streams_total``: streams opened on them (relayed
  requests and the agent's own reports' probes, lists and watches);
* ``herdgate_agent_event_loop_tasks`` (gauge): asyncio tasks alive in the agent at the
  scrape (the gateway's ``herdgate_event_loop_tasks``): a count that grows with faults or
  traffic and does not come back is a leak;
* ``herdgate_agent_apiserver_latency_seconds`` (histogram): from the first byte the
  gateway sends on a stream (after the API server last answered on it) to the API
  server's first byte back. The agent parses no HTTP, so this is the time to the first
  byte of each answer on a plain request stream; on an upgraded stream (exec, attach,
  port-forward) each burst of input and the next output count as one exchange. Over
  HTTP/2: from a request's HEADERS sent to the answer's HEADERS received.

The listener is plain HTTP without authentication: it serves no secret, and is meant to
be bound where only the kubelet and Prometheus reach it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from config.errors import ConfigError
from tunnel.stats import AgentStats

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StatsCollector(Collector):
    def __init__(self, stats: AgentStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield GaugeMetricFamily(
            "herdgate_agent_tunnels", "Tunnels to gateway replicas now up.", value=s.tunnels
        )
        yield GaugeMetricFamily(
            "herdgate_agent_gateway_replicas",
            "Gateway replicas the gateway last reported (one tunnel to each is wanted).",
            value=s.wanted,
        )
        dials = CounterMetricFamily(
            "herdgate_agent_dials", "Tunnel dials by outcome.", labels=["outcome"]
        )
        for outcome, count in sorted(s.dials.items()):
            dials.add_metric([outcome], count)
        yield dials
        direct = CounterMetricFamily(
            "herdgate_agent_direct_dials",
            "Dials of one gateway replica at its own address, by outcome.",
            labels=["outcome"],
        )
        for outcome, count in sorted(s.direct_dials.items()):
            direct.add_metric([outcome], count)
        yield direct
        yield CounterMetricFamily(
            "herdgate_agent_reconnects",
            "Tunnels established after a tunnel was lost.",
            value=s.reconnects,
        )
        yield CounterMetricFamily(
            "herdgate_agent_streams", "Streams the gateway opened.", value=s.streams_total
        )
        yield GaugeMetricFamily(
            "herdgate_agent_streams_open", "Streams relayed now.", value=s.streams_open
        )
        yield GaugeMetricFamily(
            "herdgate_agent_apiserver_http2_connections",
            "HTTP/2 connections open to the API server.",
            value=s.h2_connections,
        )
        yield CounterMetricFamily(
            "herdgate_agent_apiserver_http2_streams",
            "HTTP/2 streams opened to the API server (relayed requests and the agent's own).",
            value=s.h2_streams,
        )
        yield CounterMetricFamily(
            "herdgate_agent_stream_failures",
            "Streams refused because the API server could not be reached.",
            value=s.stream_failures,
        )
        sent = CounterMetricFamily(
            "herdgate_agent_bytes",
            "Bytes relayed between the tunnels and the API server.",
            labels=["direction"],
        )
        sent.add_metric(["to_apiserver"], s.bytes_to_apiserver)
        sent.add_metric(["from_apiserver"], s.bytes_from_apiserver)
        yield sent
        yield HistogramMetricFamily(
            "herdgate_agent_apiserver_latency_seconds",
            "Time from a request's first byte to the API server's first byte back.",
            buckets=s.latency.buckets(),
            sum_value=s.latency.total,
        )
        tasks = _live_tasks()
        if tasks is not None:
            yield GaugeMetricFamily(
                "herdgate_agent_event_loop_tasks",
                "asyncio tasks alive in the agent at the scrape: a count that grows with "
                "faults or traffic and does not come back is a leak.",
                value=tasks,
            )


def _live_tasks() -> int | None:
    """The running loop's live tasks; None outside a loop (a collector called from a
    thread, as a unit test does)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return None


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9440`` for IPv6; an empty host is every address)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("health_listen", f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def probe_app(stats: AgentStats, ready: Callable[[], bool]) -> web.Application:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(request: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ok")
        return web.Response(status=503, text="no tunnel to the gateway")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_probes(listen: str, stats: AgentStats, ready: Callable[[], bool]) -> web.AppRunner:
    """Serve :func:`probe_app` on ``listen``; the caller cleans the runner up."""
    host, port = split_listen(listen)
    runner = web.AppRunner(probe_app(stats, ready), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError("health_listen", f"cannot listen on {listen}: {exc}") from exc
    logger.info("health and metrics on http://%s/ (/healthz, /readyz, /metrics)", listen)
    return runner

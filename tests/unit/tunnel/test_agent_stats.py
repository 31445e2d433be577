"""The agent's counters as Prometheus text (``tunnel.stats``, ``tunnel.probes``): what
``/metrics`` serves parses with prometheus_client's own parser and says what was counted."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from config.errors import ConfigError
from tunnel.probes import StatsCollector, split_listen
from tunnel.stats import LATENCY_BUCKETS, AgentStats, Histogram


def _scrape(stats: AgentStats) -> dict[str, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    text = generate_latest(registry).decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_counters_become_metrics() -> None:
    stats = AgentStats(tunnels=2, wanted=3, reconnects=1, streams_total=5, streams_open=1)
    stats.dials["new"] = 3
    stats.dials["failed"] = 4
    stats.bytes_to_apiserver = 100
    stats.bytes_from_apiserver = 2000
    stats.latency.observe(0.003)
    stats.latency.observe(0.2)
    got = _scrape(stats)
    assert got["herdgate_agent_tunnels"] == 2
    assert got["herdgate_agent_gateway_replicas"] == 3
    assert got["herdgate_agent_dials_total{outcome=new}"] == 3
    assert got["herdgate_agent_dials_total{outcome=failed}"] == 4
    assert got["herdgate_agent_reconnects_total"] == 1
    assert got["herdgate_agent_streams_total"] == 5
    assert got["herdgate_agent_streams_open"] == 1
    assert got["herdgate_agent_bytes_total{direction=to_apiserver}"] == 100
    assert got["herdgate_agent_bytes_total{direction=from_apiserver}"] == 2000
    assert got["herdgate_agent_apiserver_latency_seconds_count"] == 2
    assert got["herdgate_agent_apiserver_latency_seconds_sum"] == pytest.approx(0.203)
    assert got["herdgate_agent_apiserver_latency_seconds_bucket{le=0.0025}"] == 0
    assert got["herdgate_agent_apiserver_latency_seconds_bucket{le=0.005}"] == 1
    assert got["herdgate_agent_apiserver_latency_seconds_bucket{le=0.25}"] == 2
    assert got["herdgate_agent_apiserver_latency_seconds_bucket{le=+Inf}"] == 2


def test_live_tasks_are_counted_at_the_scrape() -> None:
    """``herdgate_agent_event_loop_tasks``: the loop's live tasks when the scrape runs
    in it (as ``/metrics`` does); left out when no loop runs."""

    async def scrape() -> tuple[dict[str, float], int]:
        sleepers = [asyncio.create_task(asyncio.sleep(10)) for _ in range(3)]
        try:
            return _scrape(AgentStats()), len(asyncio.all_tasks())
        finally:
            for task in sleepers:
                task.cancel()
            await asyncio.gather(*sleepers, return_exceptions=True)

    got, live = asyncio.run(scrape())
    assert live == 4  # the three sleepers and the scrape's own
    assert got["herdgate_agent_event_loop_tasks"] == live
    assert "herdgate_agent_event_loop_tasks" not in _scrape(AgentStats())


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50))
def test_histogram_buckets_are_cumulative(values: list[float]) -> None:
    h = Histogram()
    for v in values:
        h.observe(v)
    buckets = h.buckets()
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    counts = [c for _, c in buckets]
    assert counts == sorted(counts) and counts[-1] == len(values)
    for (bound, count), limit in zip(buckets, (*LATENCY_BUCKETS, float("inf")), strict=True):
        assert count == sum(1 for v in values if v <= limit), bound


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9440", ("127.0.0.1", 9440)),
        (":9440", ("0.0.0.0", 9440)),
        ("[::1]:1", ("::1", 1)),
    ],
)
def test_split_listen(listen: str, expected: tuple[str, int]) -> None:
    assert split_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9440", "host:", "host:port", "h:70000"])
def test_split_listen_refuses(listen: str) -> None:
    with pytest.raises(ConfigError, match="health_listen"):
        split_listen(listen)

"""Gateway metrics: request counters, the sampler of tunnel figures, the exposition.

prometheus_client metrics are process-global, so every test reads deltas, under labels
of its own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from gateway.identity.providers.registry import Providers
from gateway.operations.sampler import Sampler
from gateway.telemetry import metrics
from tunnel.registry import TunnelRegistry


def value(name: str, **labels: str) -> float:
    metrics.HOT.flush()  # as a scrape does
    return REGISTRY.get_sample_value(name, labels) or 0.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_count_request_counts_by_cluster_verb_and_code() -> None:
    cluster, verb = unique("c"), "patch"
    count = "herdgate_request_duration_seconds_count"
    before = {
        "count": value(count, verb=verb),
        "sum": value("herdgate_request_duration_seconds_sum", verb=verb),
        "fast": value("herdgate_request_duration_seconds_bucket", verb=verb, le="0.0025"),
        "slower": value("herdgate_request_duration_seconds_bucket", verb=verb, le="0.005"),
    }
    for _ in range(3):
        metrics.count_request(cluster, verb, 200, 0.004)
    metrics.count_request(cluster, verb, 404, 0.002)
    total = "herdgate_requests_total"
    assert value(total, cluster=cluster, verb=verb, code="200") == 3
    assert value(total, cluster=cluster, verb=verb, code="404") == 1
    assert value(count, verb=verb) - before["count"] == 4
    assert value("herdgate_request_duration_seconds_sum", verb=verb) - before[
        "sum"
    ] == pytest.approx(0.014)
    bucket = "herdgate_request_duration_seconds_bucket"
    assert value(bucket, verb=verb, le="0.0025") - before["fast"] == 1
    assert value(bucket, verb=verb, le="0.005") - before["slower"] == 4


def test_long_running_requests_are_counted_but_not_timed() -> None:
    cluster, verb = unique("c"), "watch"
    metrics.count_request(cluster, verb, 200, None)
    metrics.count_request(cluster, verb, 200, None)
    assert value("herdgate_requests_total", cluster=cluster, verb=verb, code="200") == 2
    assert REGISTRY.get_sample_value("herdgate_request_duration_seconds_count", {"verb": verb}) in (
        None,
        0.0,
    )


@dataclass
class FakeSession:
    bytes_sent: int = 0
    bytes_received: int = 0
    stream_count: int = 0


@dataclass(eq=False)
class FakeLink:
    cluster_id: str
    session: FakeSession = field(default_factory=FakeSession)
    is_node_agent: bool = False
    is_usable: bool = True
    load: int = 0


def _sampler(registry: TunnelRegistry[FakeLink], providers: Any = None) -> Sampler:
    return Sampler(cast(Any, registry), providers or Providers())


def _bytes(direction: str) -> float:
    return value("herdgate_tunnel_bytes_total", direction=direction)


def test_sampler_counts_byte_growth_and_streams() -> None:
    registry: TunnelRegistry[FakeLink] = TunnelRegistry()
    sampler = _sampler(registry)
    c1, c2 = unique("c"), unique("c")
    one, two, three = FakeLink(c1), FakeLink(c1), FakeLink(c2)
    for link in (one, two, three):
        registry.add(link)
    assert value("herdgate_tunnels_open", cluster=c1) == 2
    assert value("herdgate_tunnels_open", cluster=c2) == 1

    sent, received = _bytes("sent"), _bytes("received")
    one.session = FakeSession(bytes_sent=100, bytes_received=10, stream_count=2)
    three.session = FakeSession(bytes_sent=5, bytes_received=0, stream_count=1)
    sampler.sample()
    assert _bytes("sent") - sent == 105
    assert _bytes("received") - received == 10
    assert value("herdgate_tunnel_streams_open") == 3

    one.session.bytes_sent = 150
    one.session.stream_count = 0
    sampler.sample()
    sampler.sample()  # nothing new: nothing counted twice
    assert _bytes("sent") - sent == 155
    assert _bytes("received") - received == 10
    assert value("herdgate_tunnel_streams_open") == 1


def test_sampler_counts_a_closed_links_last_bytes() -> None:
    registry: TunnelRegistry[FakeLink] = TunnelRegistry()
    sampler = _sampler(registry)
    cluster = unique("c")
    link = FakeLink(cluster, FakeSession(bytes_sent=10, bytes_received=20, stream_count=1))
    registry.add(link)
    sent, received = _bytes("sent"), _bytes("received")
    sampler.sample()
    link.session.bytes_sent, link.session.bytes_received = 15, 27
    registry.remove(link)  # the sampler counts its last bytes (TunnelRegistry.on_remove)
    assert value("herdgate_tunnels_open", cluster=cluster) == 0
    assert _bytes("sent") - sent == 15
    assert _bytes("received") - received == 27
    sampler.sample()  # the closed link is gone: nothing more is counted
    assert _bytes("sent") - sent == 15
    assert value("herdgate_tunnel_streams_open") == 0


def test_sampler_copies_the_oidc_token_cache_counters() -> None:
    stats = SimpleNamespace(cache_hits=0, verifications=0)
    providers = SimpleNamespace(oidc=SimpleNamespace(stats=stats))
    registry: TunnelRegistry[FakeLink] = TunnelRegistry()
    sampler = _sampler(registry, providers)
    hit, miss = (
        value("herdgate_token_cache_total", result="hit"),
        value("herdgate_token_cache_total", result="miss"),
    )
    stats.cache_hits, stats.verifications = 7, 2
    sampler.sample()
    stats.cache_hits, stats.verifications = 9, 3
    sampler.sample()
    assert value("herdgate_token_cache_total", result="hit") - hit == 9
    assert value("herdgate_token_cache_total", result="miss") - miss == 3
    # A reload made a new provider: its counters start again from zero.
    providers.oidc = SimpleNamespace(stats=SimpleNamespace(cache_hits=1, verifications=1))
    sampler.sample()
    assert value("herdgate_token_cache_total", result="hit") - hit == 10
    assert value("herdgate_token_cache_total", result="miss") - miss == 4


def test_exposition(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    cluster = unique("c")
    metrics.count_request(cluster, "list", 200, 0.01)
    text = metrics.exposition().decode()
    assert "# TYPE herdgate_requests_total counter" in text
    samples = [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "herdgate_requests_total"
    ]
    mine = [s for s in samples if s.labels.get("cluster") == cluster]
    assert [(s.labels, s.value) for s in mine] == [
        ({"cluster": cluster, "verb": "list", "code": "200"}, 1.0)
    ]
    assert "herdgate_request_duration_seconds_bucket" in text


@pytest.mark.parametrize("multiprocess", [False, True])
def test_cluster_statuses_are_read_when_scraped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, multiprocess: bool
) -> None:
    """The status series come from the rows given at scrape time: no series kept per
    cluster, a cluster gone from the rows is gone from the next scrape; with several
    workers (the multiprocess directory) too, once, from the process that answers."""
    if multiprocess:
        monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    else:
        monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    one, two = unique("c"), unique("c")
    rows = {
        one: ({"pending": 0, "active": 1, "unavailable": 0}, {"Ready": 1, "Connected": -1}, 3),
        two: ({"pending": 1, "active": 0, "unavailable": 0}, {}, 0),
    }
    monkeypatch.setattr(
        metrics.CLUSTER_STATUSES,
        "rows",
        lambda: [(cluster, *row) for cluster, row in list(rows.items())],
    )

    def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = metrics.exposition().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("herdgate_cluster_")
            and sample.labels.get("cluster") in (one, two)
        }

    seen = scraped()
    assert seen[("herdgate_cluster_state", (("cluster", one), ("state", "active")))] == 1.0
    assert seen[("herdgate_cluster_state", (("cluster", one), ("state", "pending")))] == 0.0
    assert seen[("herdgate_cluster_condition", (("cluster", one), ("condition", "Ready")))] == 1
    assert (
        seen[("herdgate_cluster_condition", (("cluster", one), ("condition", "Connected")))] == -1
    )
    assert seen[("herdgate_cluster_nodes", (("cluster", one),))] == 3.0
    assert seen[("herdgate_cluster_state", (("cluster", two), ("state", "pending")))] == 1.0
    assert len(seen) == 3 + 2 + 1 + 3 + 1
    del rows[two]
    assert {labels for _, labels in scraped()} == {
        labels for _, labels in seen if ("cluster", one) in labels
    }


def test_response_is_prometheus_text() -> None:
    resp = metrics.response()
    assert resp.content_type == "text/plain"
    assert resp.body is not None


def test_batched_histogram_matches_observe() -> None:
    # The same observations through prometheus_client's observe and through the batch
    # end in the same buckets and sum, boundaries and +Inf included.
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    bounds = (0.001, 0.005, 0.01)
    direct = Histogram("direct_seconds", "d", buckets=bounds, registry=registry)
    batched_metric = Histogram("batched_seconds", "b", buckets=bounds, registry=registry)
    batched = metrics._BatchedHistogram(batched_metric)
    values = [0.0, 0.0005, 0.001, 0.003, 0.005, 0.0050001, 0.01, 0.5, 3.0]
    for v in values:
        direct.observe(v)
        batched.observe(v)
    batched.flush()
    batched.flush()  # a second flush adds nothing
    for le in ("0.001", "0.005", "0.01", "+Inf"):
        d = registry.get_sample_value("direct_seconds_bucket", {"le": le})
        b = registry.get_sample_value("batched_seconds_bucket", {"le": le})
        assert d == b, le
    assert registry.get_sample_value("batched_seconds_sum") == pytest.approx(sum(values))
    assert registry.get_sample_value("batched_seconds_count") == len(values)


def test_flush_says_whether_anything_was_waiting() -> None:
    metrics.HOT.flush()
    assert metrics.HOT.flush() is False  # nothing since: the sampler may sleep longer
    metrics.HOT.request("c-flush", "get", 200, 0.01)
    assert metrics.HOT.flush() is True
    metrics.HOT.authentication("token", "success")
    assert metrics.HOT.flush() is True
    assert metrics.HOT.flush() is False

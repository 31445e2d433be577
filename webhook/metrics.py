"""The webhook's Prometheus metrics (prometheus_client), served as ``GET /metrics``.

``herdgate_webhook_decisions_total{result}``
    Answers on ``/v1/authenticate``: ``allowed`` (authenticated), ``denied`` (a
    well-formed review refused) and ``error`` (not a review, or a 4xx/5xx answer: a
    malformed or oversized body, not synced yet, a bug).
``herdgate_webhook_review_duration_seconds``
    Time from a review's arrival to its answer (the body read included).
``herdgate_webhook_records{kind}``
    Records in the cache, ``clusterauthtokens`` and ``clusteruserattributes``.
``herdgate_webhook_cache_synced``
    1 once both kinds have been listed (the webhook answers reviews), else 0.

Each :class:`WebhookMetrics` has its own registry (with the usual ``process_*`` and
``python_*`` figures), so tests can build as many apps as they like. Hot path: the
labelled children are bound once, so a review costs two increments and a clock read;
the gauges are set from the cache when ``/metrics`` is scraped.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

METRICS_PATH = "/metrics"

_REVIEW_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
)  # fmt: skip


class WebhookMetrics:
    """The webhook's metrics in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry()
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                registry.register(collector)
        self.registry = registry
        decisions = Counter(
            "herdgate_webhook_decisions_total",
            "TokenReview answers, by result: allowed, denied, or error (not a review, or a "
            "4xx/5xx answer).",
            ["result"],
            registry=registry,
        )
        self.allowed = decisions.labels("allowed")
        self.denied = decisions.labels("denied")
        self.error = decisions.labels("error")
        self.review_seconds = Histogram(
            "herdgate_webhook_review_duration_seconds",
            "Time from a TokenReview's arrival to its answer.",
            buckets=_REVIEW_BUCKETS,
            registry=registry,
        )
        records = Gauge(
            "herdgate_webhook_records",
            "Records in the webhook's cache, by kind.",
            ["kind"],
            registry=registry,
        )
        self._tokens = records.labels("clusterauthtokens")
        self._users = records.labels("clusteruserattributes")
        self._synced = Gauge(
            "herdgate_webhook_cache_synced",
            "1 once both kinds of records have been listed (reviews are answered), else 0.",
            registry=registry,
        )

    def sample(self, tokens: int, users: int, synced: bool) -> None:
        """Copy the cache's sizes and state into the gauges."""
        self._tokens.set(tokens)
        self._users.set(users)
        self._synced.set(1 if synced else 0)

    def exposition(self, tokens: int, users: int, synced: bool) -> bytes:
        self.sample(tokens, users, synced)
        return generate_latest(self.registry)

    def response(self, tokens: int, users: int, synced: bool) -> web.Response:
        """The ``/metrics`` page, with the cache's ``tokens`` and ``users`` counts and
        whether it is ``synced``."""
        return web.Response(
            body=self.exposition(tokens, users, synced),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

"""The gateway's Prometheus metrics (prometheus_client) and the ``/metrics`` answer.

With several workers (``workers: N``) the supervisor sets ``PROMETHEUS_MULTIPROC_DIR``
before starting them, prometheus_client keeps each worker's values in that directory,
and ``/metrics`` on any worker answers for all of them.

Hot path: the proxy counts each request through ``HOT`` (``HotPath``), which keeps
per-bucket counts in plain lists and adds them to the metrics every second and before
each scrape: a request's metrics cost a few dict lookups and increments
(docs/benchmarks.md, "Since the 00:41 run", has the figure).
Figures that already exist as plain integers (tunnel bytes, open streams, the OIDC
token cache) are copied into the metrics by ``sample`` on each scrape and every few
seconds, instead of being counted twice on every frame.
"""

from __future__ import annotations

import bisect
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

StatusRows = Callable[[], Iterable[tuple[str, Mapping[str, int], Mapping[str, int], int]]]
"""Each cluster's stored status: (cluster id, {state: 1 for its own, 0 for the others},
{condition: 1, 0 or -1}, nodes)."""


class ClusterStatuses:
    """``herdgate_cluster_state``, ``herdgate_cluster_condition`` and
    ``herdgate_cluster_nodes``, read from the stored statuses when scraped (a collector:
    no series objects kept per cluster, nothing to update or remove when a status
    changes or a cluster goes). Every process has every stored status, so whichever
    process answers the scrape answers for all clusters."""

    def __init__(self) -> None:
        self.rows: StatusRows | None = None

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "herdgate_cluster_state",
                "1 for the state each cluster is in (pending, active, unavailable), 0 for "
                "the others, as its controller last stored it.",
                labels=["cluster", "state"],
            ),
            GaugeMetricFamily(
                "herdgate_cluster_condition",
                "Each cluster's conditions (Connected, Ready, Synced, ACESynced): 1 True, "
                "0 False, -1 Unknown.",
                labels=["cluster", "condition"],
            ),
            GaugeMetricFamily(
                "herdgate_cluster_nodes",
                "Nodes each cluster reports, as its controller last stored them.",
                labels=["cluster"],
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        state, condition, nodes = self._families()
        rows = self.rows
        for cluster, states, conditions, count in rows() if rows is not None else ():
            for name, value in states.items():
                state.add_metric([cluster, name], value)
            for kind, value in conditions.items():
                condition.add_metric([cluster, kind], value)
            nodes.add_metric([cluster], count)
        return iter((state, condition, nodes))


CLUSTER_STATUSES = ClusterStatuses()
DEFAULT_REGISTRY.register(CLUSTER_STATUSES)
DOWNSTREAM_THROTTLED = Counter(
    "herdgate_downstream_throttled_seconds_total",
    "Seconds the gateway's own requests to each cluster (its controller, the access and ACE "
    "syncs) waited for the cluster's request rate (controller.requests_per_second).",
    ["cluster"],
)
CLUSTER_PROBE_SECONDS = Gauge(
    "herdgate_cluster_probe_seconds",
    "How long the last /readyz probe of each cluster took (set by the process running the "
    "cluster's controller; 0 elsewhere).",
    ["cluster"],
    multiprocess_mode="livemax",
)

STORE_FEED_LAG = Gauge(
    "herdgate_store_feed_lag_seconds",
    "Seconds since the oldest of this process's store writes that its change feed has not "
    "brought back (0: none outstanding); above store.max_feed_lag /readyz fails: the "
    "process's caches may be stale.",
    multiprocess_mode="livemax",
)
EVENT_LOOP_TASKS = Gauge(
    "herdgate_event_loop_tasks",
    "asyncio tasks alive in this process, sampled every 5 s: a count that grows with "
    "traffic and does not come back when it stops is a leak.",
    multiprocess_mode="livesum",
)
STORE_FEED_RELOADS = Counter(
    "herdgate_store_feed_reloads_total",
    "Times the caches were rebuilt from a fresh list because the store's change feed lost "
    "writes (an etcd compaction past the watch, a change log that moved past the process).",
)
STORE_FEED_RESTARTS = Counter(
    "herdgate_store_feed_restarts_total",
    "Times the store's change feed was dropped and opened again because this process's own "
    "writes did not come back on it within store.max_feed_lag (a stalled watch).",
)


def forget_cluster(cluster: str) -> None:
    """Drop a deleted cluster's series kept by this process (label sets are cluster ids
    only; the status series come from the stored statuses, ``ClusterStatuses``)."""
    with contextlib.suppress(KeyError):
        CLUSTER_PROBE_SECONDS.remove(cluster)


REQUESTS = Counter(
    "herdgate_requests_total",
    "Requests proxied to clusters, by cluster, Kubernetes verb and HTTP status code.",
    ["cluster", "verb", "code"],
)
REQUEST_SECONDS = Histogram(
    "herdgate_request_duration_seconds",
    "Time from a proxied request's arrival to the end of its answer (watches, "
    "followed logs and exec/attach/port-forward sessions excluded).",
    ["verb"],
    buckets=_LATENCY_BUCKETS,
)
AUTH_SECONDS = Histogram(
    "herdgate_auth_duration_seconds",
    "Time to authenticate and authorise a proxied request.",
    buckets=_LATENCY_BUCKETS,
)
TUNNEL_ROUNDTRIP_SECONDS = Histogram(
    "herdgate_tunnel_roundtrip_seconds",
    "Time from sending a request into a tunnel to receiving the API server's response head.",
    buckets=_LATENCY_BUCKETS,
)
TUNNELS_OPEN = Gauge(
    "herdgate_tunnels_open",
    "Agent tunnels connected to this gateway, by cluster.",
    ["cluster"],
    multiprocess_mode="livesum",
)
STREAMS_OPEN = Gauge(
    "herdgate_tunnel_streams_open",
    "Streams open in agent tunnels.",
    multiprocess_mode="livesum",
)
TUNNEL_BYTES = Counter(
    "herdgate_tunnel_bytes_total",
    "Bytes through agent tunnels (frames included), by direction from the gateway.",
    ["direction"],
)
ACCESS_SYNC_OBJECTS = Gauge(
    "herdgate_access_sync_objects",
    "RBAC objects the access sync keeps in each cluster (ClusterRoles, ClusterRoleBindings, "
    "RoleBindings), as of its last full pass.",
    ["cluster", "kind"],
    multiprocess_mode="livemax",
)
ACCESS_SYNC_CHANGES = Counter(
    "herdgate_access_sync_changes_total",
    "RBAC objects the access sync created, updated or deleted, by cluster and action.",
    ["cluster", "action"],
)
ACCESS_SYNC_ERRORS = Counter(
    "herdgate_access_sync_errors_total",
    "Access sync passes that failed (retried), by cluster.",
    ["cluster"],
)
ACCESS_SYNC_LAST = Gauge(
    "herdgate_access_sync_last_success_timestamp_seconds",
    "When the access sync last brought each cluster's RBAC in step (Unix time).",
    ["cluster"],
    multiprocess_mode="livemax",
)
ACE_SYNC_CHANGES = Counter(
    "herdgate_ace_sync_changes_total",
    "Direct-access records (ClusterAuthToken, ClusterUserAttribute) the ACE sync of this "
    "process created, replaced or deleted, by cluster and action.",
    ["cluster", "action"],
)
ACE_SYNC_ERRORS = Counter(
    "herdgate_ace_sync_errors_total",
    "ACE sync passes that failed (retried), by cluster.",
    ["cluster"],
)
ACE_SYNC_LAST = Gauge(
    "herdgate_ace_sync_last_success_timestamp_seconds",
    "When this process's ACE sync last brought each cluster's direct-access records in "
    "step (Unix time).",
    ["cluster"],
    multiprocess_mode="livemax",
)
AUTHENTICATIONS = Counter(
    "herdgate_authentications_total",
    "Credentials presented to the proxy, by kind (token, oidc) and result.",
    ["method", "result"],
)
TOKEN_CACHE = Counter(
    "herdgate_token_cache_total",
    "Lookups in the cache of validated bearer ID tokens (OIDC), by result.",
    ["result"],
)
LOGINS = Counter(
    "herdgate_logins_total",
    "Logins, by provider and result (success, invalid, unavailable, limited).",
    ["provider", "result"],
)
PROVIDER_SECONDS = Histogram(
    "herdgate_provider_request_duration_seconds",
    "Time of requests to identity providers (LDAP binds and searches, OIDC and GitHub).",
    ["provider", "operation"],
    buckets=_LATENCY_BUCKETS,
)
CLIENT_CONNECTIONS = Counter(
    "herdgate_client_connections_total",
    "Client connections accepted on the HTTPS listener, by protocol (http/1.1, h2).",
    ["protocol"],
)
CONNECTIONS_OPEN = Gauge(
    "herdgate_client_connections_open",
    "Client connections held on the HTTPS listener, TLS handshakes in progress included.",
)
CONNECTIONS_REFUSED = Counter(
    "herdgate_client_connections_refused_total",
    "Client connections closed at accept: limits.max_connections (total) or "
    "limits.per_address (address) reached.",
    ["limit"],
)
SESSIONS = Counter(
    "herdgate_sessions_total",
    "exec, attach and port-forward sessions relayed, by cluster.",
    ["cluster"],
)


class _BatchedHistogram:
    """Observations kept as per-bucket counts in plain lists until ``flush``.

    prometheus_client takes a lock per observation, and with several workers writes a
    memory-mapped file twice: several times what batching costs (docs/benchmarks.md,
    "Since the 00:41 run", has the figures).
    ``flush`` adds the counts to the histogram child's buckets, which hold per-bucket
    (not cumulative) counts, exactly as ``observe`` would have.
    """

    __slots__ = ("_bounds", "_child", "_counts", "_n", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._n = 0

    def observe(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds
        self._n += 1

    def flush(self) -> bool:
        if not self._n:
            return False
        buckets = self._child._buckets
        for index, count in enumerate(self._counts):
            if count:
                buckets[index].inc(count)
                self._counts[index] = 0
        self._child._sum.inc(self._sum)
        self._sum = 0.0
        self._n = 0
        return True


class _BatchedCounter:
    __slots__ = ("_child", "pending")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self.pending = 0

    def flush(self) -> bool:
        if not self.pending:
            return False
        self._child.inc(self.pending)
        self.pending = 0
        return True


OTHER = "other"
"""The label value of what a client can invent: a cluster id that names no cluster, a
method that is no Kubernetes verb, and every series past ``MAX_REQUEST_SERIES``."""
VERBS = frozenset(
    {
        # kube-apiserver's verbs (gateway.proxy.requestinfo), and the lower-case methods of
        # non-resource requests (/version, /openapi/v3 ...).
        "get", "list", "watch", "create", "update", "patch", "delete", "deletecollection",
        "connect", "head", "options", "post", "put",
    }
)  # fmt: skip
MAX_REQUEST_SERIES = 10_000
"""``herdgate_requests_total`` series (cluster, verb, code) kept apart per process; past
it a request is counted under (other, other, other): a scrape stays bounded whatever
clients send."""


def request_labels(cluster: str, verb: str, code: int) -> tuple[str, str, str]:
    """The labels a request is counted under: ``cluster`` must be a cluster's id (the
    caller says ``OTHER`` for an unknown one), ``verb`` one of ``VERBS``, ``code`` an
    HTTP status (or 499)."""
    return (
        cluster,
        verb if verb in VERBS else OTHER,
        str(code) if 100 <= code <= 599 else OTHER,
    )


class HotPath:
    """The metrics every proxied request touches, batched (see ``_BatchedHistogram``).

    ``flush`` runs every ``FLUSH_S`` and before each scrape, so a scrape shows this
    process's requests at once and other workers' within a second. Label values come
    from a bounded set (``request_labels``, ``MAX_REQUEST_SERIES``): a client inventing
    cluster ids or methods adds no series.
    """

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int], _BatchedCounter] = {}
        """Counters by what the proxy said (at most ``MAX_REQUEST_SERIES``)."""
        self._by_labels: dict[tuple[str, str, str], _BatchedCounter] = {}
        """The same counters by their labels (several keys may share one)."""
        self._durations: dict[str, _BatchedHistogram] = {}
        self._authentications: dict[tuple[str, str], _BatchedCounter] = {}
        self.auth = _BatchedHistogram(AUTH_SECONDS)
        self.roundtrip = _BatchedHistogram(TUNNEL_ROUNDTRIP_SECONDS)

    def request(self, cluster: str, verb: str, code: int, seconds: float | None) -> None:
        """One proxied request; ``seconds`` is None for long-running ones. ``cluster`` is
        a cluster's id or ``OTHER``."""
        key = (cluster, verb, code)
        counter = self._requests.get(key)
        if counter is None:
            labels = request_labels(cluster, verb, code)
            if labels[1] == OTHER:
                verb = OTHER
            if len(self._requests) >= MAX_REQUEST_SERIES:
                labels = (OTHER, OTHER, OTHER)
            counter = self._by_labels.get(labels)
            if counter is None:
                counter = _BatchedCounter(REQUESTS.labels(*labels))
                self._by_labels[labels] = counter
            if len(self._requests) < MAX_REQUEST_SERIES:
                self._requests[key] = counter
        elif verb not in VERBS:
            verb = OTHER
        counter.pending += 1
        if seconds is not None:
            histogram = self._durations.get(verb)
            if histogram is None:
                histogram = self._durations[verb] = _BatchedHistogram(REQUEST_SECONDS.labels(verb))
            histogram.observe(seconds)

    def authentication(self, method: str, result: str) -> None:
        key = (method, result)
        counter = self._authentications.get(key)
        if counter is None:
            counter = self._authentications[key] = _BatchedCounter(
                AUTHENTICATIONS.labels(method, result)
            )
        counter.pending += 1

    def flush(self) -> bool:
        """Add what was counted since the last flush; False if there was nothing."""
        flushed = False
        for counter in self._by_labels.values():
            flushed = counter.flush() or flushed
        for counter in self._authentications.values():
            flushed = counter.flush() or flushed
        for histogram in self._durations.values():
            flushed = histogram.flush() or flushed
        flushed = self.auth.flush() or flushed
        return self.roundtrip.flush() or flushed


HOT = HotPath()
FLUSH_S = 1.0


def count_request(cluster: str, verb: str, code: int, seconds: float | None) -> None:
    HOT.request(cluster, verb, code, seconds)


BYTES_SENT = TUNNEL_BYTES.labels("sent")
BYTES_RECEIVED = TUNNEL_BYTES.labels("received")


def add(counter: Counter, amount: int) -> None:
    """``counter.inc(amount)`` for a positive amount."""
    if amount > 0:
        counter.inc(amount)


def shared_between_workers() -> bool:
    """Whether several workers keep their values in one directory (each worker's scrape
    answers for all of them, so each worker's figures must be kept fresh between its
    own scrapes)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def exposition() -> bytes:
    """The text format for all of this host's gateway processes (this one's batched
    request metrics flushed first)."""
    HOT.flush()
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        registry.register(CLUSTER_STATUSES)
        return generate_latest(registry)
    return generate_latest(DEFAULT_REGISTRY)


def response() -> web.Response:
    body = exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

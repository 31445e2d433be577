"""One controller per cluster, in exactly one gateway process: the holder of its lease.

``ClusterControllers`` (one per process) keeps, for every cluster this process holds an
agent tunnel to, a ``LeaseKeeper`` on the lease ``cluster/<id>`` (``lease``): a process
without a tunnel to the cluster does not contend, and gives the lease up when its last
tunnel goes. While the lease is held, a ``ClusterController`` runs for the cluster:

- it probes ``/readyz`` and ``/version`` every ``controller.probe_interval`` (10 s)
  through the tunnel (``kubeapi.KubeClient`` on the internal socket, ``downstream``, as
  the agent's service account), retrying failures with exponential backoff capped at the
  interval, so a failure shows within the interval plus the probe's timeout;
- it lists and then watches nodes and namespaces, resuming each watch from its last
  resourceVersion after the stream ends or breaks, and listing again after
  ``410 Gone``; every request to the cluster takes a token from the cluster's bucket
  (``downstream.DownstreamRate``: ``controller.requests_per_second``, ``request_burst``,
  shared with the access and ACE syncs);
- it feeds ``ClusterHealth`` (the pure state machine) and writes the ``clusterstatus``
  record when what it shows changed, never on an unchanged poll, with the lease's
  generation (fencing: a status written under a newer generation is left alone).

Every process shows the stored record (``gateway.api.clusters.cluster_view``), so a
``GET /v3/clusters/<id>`` answers the same through any worker or replica.
A stopping process (``ClusterControllers.begin_stop``, ``stop``) writes the last statuses of
the clusters no other replica reaches in one batch and gives every lease up in one write
(``lease.release_all``), not a write or two per cluster.
``ClusterControllers.set_condition`` lets other controllers set theirs: ``Synced`` (the
access sync) and ``ACESynced`` (the ACE record sync). Both run under the cluster's lease
(``leads``, ``on_lead``), so a cluster's controller, access sync and ACE sync always run
in the same process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final

from aiohttp import web

from config.schema import ControllerSettings
from gateway.clusters.replicas import REPLICAS, ReplicaSet
from gateway.clusters.tunnels import TUNNELS, AgentLink
from gateway.controllers.cluster_health import (
    ACE_SYNCED,
    CONNECTED,
    OPTIONAL_CONDITIONS,
    READY,
    SET_ELSEWHERE,
    STATES,
    SYNCED,
    AgentView,
    ClusterHealth,
    same_status,
    status_doc,
)
from gateway.controllers.downstream import InternalListener
from gateway.controllers.kubeapi import ApiError, Params, resource_path
from gateway.controllers.lease import SESSION_PREFIX, Lease, LeaseKeeper, lease_for, release_all
from gateway.identity.directory import DIRECTORY, Directory
from gateway.keys import SETTINGS
from gateway.store.base import StoreError, swap_all
from gateway.store.records import CLUSTER, CLUSTER_STATUS, LEASE
from gateway.telemetry import metrics
from gateway.telemetry.drain import stopping_step
from tunnel.cluster_state import (
    MAX_NAMESPACES,
    MAX_NODES,
    NAMESPACES,
    NODES,
    Applied,
    Backoff,
    WatchTable,
)
from tunnel.cluster_watch import Gone, follow
from tunnel.registry import TunnelRegistry

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
WATCH_TIMEOUT_S = 240
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
WRITE_DEBOUNCE_S = 0.05
LEASE_PREFIX = "cluster/"
STOP_STATUS_S = 5.0
"""How long a stopping process spends writing its clusters' last statuses (those no
other replica reaches) before it gives every lease up; any left are redone by whoever
next holds each cluster's lease."""
STOP_RELEASE_S = 5.0
"""How long a stopping process waits for the store to take its leases back (one write);
past it they lapse with their session, at the TTL."""
HEARTBEAT_S = 60.0
"""How often a reporting agent says it is still there when nothing changed."""
LATE_AFTER_HEARTBEATS = 3
"""A reporting agent silent for this many heartbeats (plus the probe interval) makes the
cluster's ``Ready`` Unknown (``AgentReportsLate``), as a probe that cannot get through."""
SWEEP_S = 30.0
"""How often the reporters' last words are checked (one task per process)."""
REPORT_WRITE_MIN_S = 1.0
"""Status writes driven by reports are at least this far apart (a hostile agent that
reports a change every second cannot make the gateway write more often)."""

Doc = dict[str, Any]


def agent_views(
    links: list[AgentLink], replica: str, since: dict[int, float], wall_offset: float
) -> tuple[AgentView, ...]:
    """The views of the usable links; ``since`` keeps each link's connect time in wall
    seconds once computed (so an unchanged link always shows the same)."""
    live = {id(link): link for link in links if not link.session.is_closed}
    for key in list(since):
        if key not in live:
            del since[key]
    return tuple(
        AgentView(
            link.info.node_name,
            replica,
            since.setdefault(key, round(link.connected_at + wall_offset)),
            link.remote,
        )
        for key, link in live.items()
    )


class ClusterController:
    """The work for one cluster while this process holds its lease."""

    def __init__(self, owner: ClusterControllers, cluster_id: str, lease: Lease) -> None:
        self.owner = owner
        self.cluster_id = cluster_id
        self.lease = lease
        directory = owner.directory
        stored = directory.statuses.get(cluster_id)
        stored_doc = None if stored is None else _plain(stored)
        self.health = ClusterHealth.from_status(cluster_id, stored_doc)
        cluster = directory.clusters.get(cluster_id)
        if cluster is not None and cluster.connected_at is not None:
            self.health.ever_connected = True
        self.nodes = WatchTable(MAX_NODES)
        self.namespaces = WatchTable(MAX_NAMESPACES)
        self._stored_nodes: list[Doc] | None = None
        """The stored node summaries, shown until the first list of nodes."""
        if stored_doc is not None:
            self._stored_nodes = list(stored_doc.get("nodes") or [])
            self.namespaces.items = {name: {} for name in stored_doc.get("namespaces") or []}
        self._since: dict[int, float] = {}
        self._elsewhere_written = _set_elsewhere(stored_doc)
        """The conditions other controllers set (``Synced``, ``ACESynced``) as we last
        wrote (or found) them."""
        settings = owner.settings
        self.probe_interval_s = settings.probe_interval_s
        self._dirty = False
        self._writer: asyncio.Task[None] | None = None
        """Writes the status while it is due (no task waits between changes)."""
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._probe_task: asyncio.Task[None] | None = None
        self.probe_latency_s: float | None = None
        self.reporter: AgentLink | None = None
        """The agent whose reports show the cluster's state (None: this controller probes
        and watches through the tunnel itself)."""
        self._late = False
        self._shown: AgentLink | None = None
        """The reporter whose reported state the status shows in full: a report from it
        that changed nothing (the heartbeat, most reports at idle) needs no look. Reset
        whenever the reporter or the agents change."""
        self._last_write = -REPORT_WRITE_MIN_S
        self._stopped = False
        """``stop`` ran: the agents are still looked at (the last status), but no reporter
        is chosen and nothing is probed or watched any more."""

    # -- life -------------------------------------------------------------------------

    def start(self) -> None:
        self.refresh_agents()

    @property
    def probing(self) -> bool:
        return self._probe_task is not None

    def _set_probing(self, on: bool) -> None:
        """Probe and watch through the tunnel (no agent reports), or stop doing so."""
        if on and self._probe_task is None:
            self._probe_task = asyncio.create_task(self._probe_loop())
            self._start_watches()
        elif not on and self._probe_task is not None:
            self._probe_task.cancel()
            self._probe_task = None
            for task in self._watches.values():
                task.cancel()
            self._watches.clear()

    def _start_watches(self) -> None:
        for kind in ("nodes", "namespaces"):
            old = self._watches.pop(kind, None)
            if old is not None:
                old.cancel()
            self._watches[kind] = asyncio.create_task(self._watch_loop(kind))

    async def stop(self) -> None:
        self._stopped = True
        if self.reporter is not None:
            self.reporter.stop_reports()
            self.reporter = None
        probe = [self._probe_task] if self._probe_task is not None else []
        writer = [self._writer] if self._writer is not None else []
        tasks = [*writer, *self._watches.values(), *probe]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._writer = None
        self._watches.clear()
        self._probe_task = None

    def changed(self) -> None:
        self._dirty = True
        if self._writer is None and not self._stopped:
            self._writer = asyncio.ensure_future(self._write_while_due())

    def refresh_agents(self) -> None:
        links = self.owner.tunnels.links(self.cluster_id)
        views = agent_views(links, self.owner.replicas.id, self._since, self.owner.wall_offset())
        if self.health.agents_changed(views, self.owner.directory.clock()):
            self._shown = None  # (no agents: Ready is Unknown until the next report)
            self.changed()
        if not self._stopped:
            self._choose_reporter(links)

    # -- the agent's reports ----------------------------------------------------------

    def _choose_reporter(self, links: list[AgentLink]) -> None:
        """Whose reports count: a cluster agent's if one offers them (the one already
        reporting, else the newest), else a node agent's; none: probe and watch here."""
        capable = [link for link in links if link.info.reports and link.session.is_usable]
        pool = [link for link in capable if not link.is_node_agent] or capable
        best = self.reporter if self.reporter in pool else None
        if best is None and pool:
            best = max(pool, key=lambda link: link.connected_at)
        if best is not self.reporter:
            if self.reporter is not None:
                self.reporter.stop_reports()
            self.reporter = best
            self._shown = None
            if best is not None:
                logger.debug("cluster %s: reports from %s", self.cluster_id, best)
                best.want_reports(self._on_report, self.probe_interval_s, HEARTBEAT_S)
            self.owner.reporting_changed(self.cluster_id, best is not None)
        self._set_probing(best is None)

    def _on_report(self, link: AgentLink, applied: Applied) -> None:
        """A report from an agent: what it says is what the cluster shows."""
        reported = link.reported
        if link is not self.reporter or reported is None or not reported.complete:
            return
        if not applied.changed and not self._late and self._shown is link:
            return  # the status shows this state already: the agent is alive, that is all
        state = reported.state
        now = self.owner.directory.clock()
        changed = self._late
        self._late = False
        if state.ready is not None:
            if state.ready.ok:
                changed |= self.health.probe_ok(now)
            else:
                changed |= self.health.probe_failed(state.ready.reason, state.ready.message, now)
        if state.version is not None:
            changed |= self.health.version_seen(state.version)
        if NODES in state.listed:
            nodes = [state.nodes[name] for name in sorted(state.nodes)]
            if nodes != self._stored_nodes:
                self._stored_nodes = nodes
                changed = True
        if NAMESPACES in state.listed and state.namespaces.keys() != self.namespaces.items.keys():
            self.namespaces.items = {name: {} for name in state.namespaces}
            changed = True
        if applied.namespaces and NAMESPACES in state.listed:
            self.owner.namespaces_reported(self.cluster_id, dict(state.namespaces))
        self._shown = link
        if changed:
            self.changed()

    def check_reporter(self, now: float) -> None:
        """Ready Unknown while the reporting agent is silent for too long."""
        reporter = self.reporter
        if reporter is None or self._late:
            return
        late_after = LATE_AFTER_HEARTBEATS * HEARTBEAT_S + self.probe_interval_s
        if now - reporter.last_report > late_after:
            self._late = True
            logger.warning(
                "cluster %s: no report from its agent for %.0f s",
                self.cluster_id,
                now - reporter.last_report,
            )
            if self.health.set_condition(
                READY,
                None,
                "AgentReportsLate",
                "the agent has not reported the API server's state for "
                f"{now - reporter.last_report:.0f} s",
                self.owner.directory.clock(),
            ):
                self.changed()

    # -- writing the status -----------------------------------------------------------

    def _doc(self) -> Doc:
        nodes = (
            self._stored_nodes if self._stored_nodes is not None else self.nodes.node_summaries()
        )
        return status_doc(
            self.health,
            nodes,
            self.namespaces.names(),
            self.owner.replicas.id,
            self.lease.generation,
        )

    async def write(self) -> bool:
        """Write the status if it changed and we still hold the lease; whether written."""
        directory = self.owner.directory
        if not self.lease.held() or self.cluster_id not in directory.clusters:
            return False
        for _ in range(5):
            current = await directory.store.get(CLUSTER_STATUS, self.cluster_id)
            value = self.next_status(current)
            if value is None:
                return False
            revision = await directory.store.swap(CLUSTER_STATUS, self.cluster_id, current, value)
            if revision is not None:
                self.written(value, revision)
                return True
        raise StoreError(f"status of {self.cluster_id} kept changing; write abandoned")

    def next_status(self, current: Doc | None) -> Doc | None:
        """The status to write over ``current`` (the stored one), or None: unchanged, or
        fenced (written under a newer lease generation)."""
        doc = self._doc()
        if current is not None:
            generation = current.get("generation")
            if isinstance(generation, int) and generation > self.lease.generation:
                logger.info("status of %s: a newer lease holder wrote it", self.cluster_id)
                return None  # fenced
            if _set_elsewhere(current) != self._elsewhere_written:
                # Another process set Synced or ACESynced since we last wrote: keep it.
                self._adopt_elsewhere(current)
                doc = self._doc()
            if same_status(current, doc):
                return None
        return {**doc, "updated": self.owner.directory.clock()}

    def written(self, value: Doc, revision: int) -> None:
        """``value`` (from ``next_status``) was stored at ``revision``."""
        self.owner.directory._apply_own(CLUSTER_STATUS, self.cluster_id, value, revision)
        self._elsewhere_written = _set_elsewhere(value)

    def _adopt_elsewhere(self, current: Doc) -> None:
        """Keep the ``Synced`` and ``ACESynced`` another process set (``set_condition``
        where the controller does not run), with their own transition times."""
        adopted = ClusterHealth.from_status(self.cluster_id, current)
        for kind in SET_ELSEWHERE:
            if kind in adopted.conditions:
                self.health.conditions[kind] = adopted.conditions[kind]
            else:  # an optional condition removed there
                self.health.conditions.pop(kind, None)

    async def _write_while_due(self) -> None:
        backoff = Backoff(BACKOFF_BASE_S, BACKOFF_CAP_S)
        loop = asyncio.get_running_loop()
        try:
            while self._dirty:
                delay = WRITE_DEBOUNCE_S
                if self.reporter is not None:
                    delay = max(delay, self._last_write + REPORT_WRITE_MIN_S - loop.time())
                await asyncio.sleep(delay)
                self._dirty = False
                try:
                    if await self.write():
                        self._last_write = loop.time()
                    backoff.reset()
                except StoreError as exc:
                    logger.warning("status of %s not written: %s", self.cluster_id, exc)
                    await asyncio.sleep(backoff.next())
                    self._dirty = True
        finally:
            self._writer = None

    # -- talking to the cluster -------------------------------------------------------

    async def probe(self) -> None:
        """One ``/readyz`` and ``/version`` round."""
        now = self.owner.directory.clock
        loop = asyncio.get_running_loop()
        api = self.owner.listener.client(self.cluster_id)
        started = loop.time()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await api.call("GET", "/readyz")
        except ApiError as exc:
            self.probe_latency_s = loop.time() - started
            reason, message = _failure(exc)
            if self.health.probe_failed(reason, message, now()):
                self.changed()
            raise
        self.probe_latency_s = loop.time() - started
        recovered = self.health.conditions[READY].status == "False"
        if self.health.probe_ok(now()):
            self.changed()
        if recovered:
            # The API server was down: it may have come back with other storage (a
            # resourceVersion from before means nothing then), so list again.
            self._start_watches()
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            version = await api.get("/version")
        if self.health.version_seen(version):
            self.changed()

    async def _probe_loop(self) -> None:
        backoff = Backoff(BACKOFF_BASE_S, self.probe_interval_s)
        now = self.owner.directory.clock
        while True:
            try:
                await self.probe()
                backoff.reset()
                delay = self.probe_interval_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the cluster or the tunnel failed
                if not isinstance(exc, ApiError):
                    reason, message = "ProbeFailed", _describe(exc)
                    if self.health.probe_failed(reason, message, now()):
                        self.changed()
                delay = backoff.next()
            self.owner.observe(self)
            await asyncio.sleep(delay)

    async def _watch_loop(self, kind: str) -> None:
        table = self.nodes if kind == "nodes" else self.namespaces
        # 410: gone; 504 "too large resource version": newer than the server has (it
        # restarted with other storage). Both mean list again.
        await follow(
            lambda: self._list(kind, table),
            lambda: self._watch(kind, table),
            lambda exc: _status_of(exc) == 410 or (_status_of(exc) == 504 and _too_large_text(exc)),
            f"{kind} of {self.cluster_id}",
        )

    async def _list(self, kind: str, table: WatchTable) -> None:
        api = self.owner.listener.client(self.cluster_id)
        body = await api.get(resource_path("", "v1", kind), timeout_s=PROBE_TIMEOUT_S * 6)
        items = body.get("items") or []
        table.replace(items, str((body.get("metadata") or {}).get("resourceVersion") or ""))
        self._table_changed(kind)

    async def _watch(self, kind: str, table: WatchTable) -> None:
        api = self.owner.listener.client(self.cluster_id)
        params: Params = {
            "watch": True,
            "resourceVersion": table.resource_version,
            "allowWatchBookmarks": True,
            "timeoutSeconds": WATCH_TIMEOUT_S,
        }
        path = resource_path("", "v1", kind)
        async with api.stream(path, params, timeout_s=WATCH_TIMEOUT_S + 30) as response:
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind_of_event = str(event.get("type") or "")
                item = event.get("object") or {}
                if kind_of_event == "ERROR":
                    if item.get("code") == 410 or _too_large(item):
                        raise Gone(str(item.get("message") or "gone"))
                    raise RuntimeError(f"watch error: {item.get('message')}")
                if table.event(kind_of_event, item):
                    self._table_changed(kind)

    def _table_changed(self, kind: str) -> None:
        if kind == "nodes":
            self._stored_nodes = None
        self.changed()


def _set_elsewhere(doc: Doc | None) -> list[Doc]:
    """The conditions other controllers set, as stored."""
    return [
        raw
        for raw in (doc or {}).get("conditions") or ()
        if isinstance(raw, dict) and raw.get("type") in SET_ELSEWHERE
    ]


def _plain(record: Any) -> Doc:
    from gateway.store.records import to_doc

    doc: Doc = json.loads(json.dumps(to_doc(record)))
    return doc


def _too_large(status: dict[str, Any]) -> bool:
    """kube-apiserver's answer to a watch from a resourceVersion it has not reached
    (504 ``Timeout: Too large resource version``): client-go lists again, so do we."""
    return (
        status.get("code") == 504
        and "too large resource version" in str(status.get("message") or "").lower()
    )


def _too_large_text(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and "too large resource version" in exc.body.lower()


def _status_of(exc: BaseException) -> int:
    return exc.status if isinstance(exc, ApiError) else 0


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:512]


def _failure(exc: ApiError) -> tuple[str, str]:
    """The reason and message of a failed ``/readyz``: the Kubernetes Status the gateway
    or the API server answered, else the HTTP status and the first line of the body."""
    status = exc.status_doc()
    if status is not None:
        reason = str(status.get("reason") or "") or f"HTTP{exc.status}"
        return reason, str(status.get("message") or "")[:512]
    return f"HTTP{exc.status}", f"/readyz answered {exc.status}: {exc.message()}"[:512]


class ClusterControllers:
    """This process's side of every cluster's controller: leases and the running ones."""

    def __init__(self, app: web.Application, listener: InternalListener) -> None:
        self.app = app
        self.directory: Directory = app[DIRECTORY]
        self.tunnels: TunnelRegistry[AgentLink] = app[TUNNELS]
        self.replicas: ReplicaSet = app[REPLICAS]
        self.listener = listener
        self.settings: ControllerSettings = (
            app[SETTINGS].controller if SETTINGS in app else ControllerSettings()
        )
        self.keepers: dict[str, tuple[LeaseKeeper, asyncio.Task[None]]] = {}
        self.running: dict[str, ClusterController] = {}
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._flushing: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._lead_listeners: list[Callable[[str, bool], None]] = []
        self._stopping = False
        self._sessions_checked: set[str] = set()
        self._namespace_listeners: list[Callable[[str, dict[str, str] | None], None]] = []
        self._sweep: asyncio.Task[None] | None = None

    def wall_offset(self) -> float:
        """Wall clock minus loop time (agents' connect times are loop times)."""
        return self.directory.clock() - asyncio.get_running_loop().time()

    def start(self) -> None:
        self.tunnels.on_change(self._on_tunnel_change)
        self.directory.on_change(self._on_directory_change)
        for cluster_id in list(self.directory.clusters):
            if self.tunnels.count(cluster_id):
                self._keep(cluster_id)
        metrics.CLUSTER_STATUSES.rows = self.status_rows
        self._sweep = asyncio.create_task(self._sweep_reporters())

    async def _sweep_reporters(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_S)
            now = loop.time()
            for controller in list(self.running.values()):
                controller.check_reporter(now)

    def begin_stop(self) -> None:
        """The process is stopping (before its tunnels are closed): dropped tunnels no
        longer make a status write and a lease release each (thousands of store writes,
        one after the other on SQLite); ``stop`` writes what is needed and gives every
        lease up in one write."""
        self._stopping = True

    async def stop(self) -> None:
        self._stopping = True
        if metrics.CLUSTER_STATUSES.rows == self.status_rows:
            metrics.CLUSTER_STATUSES.rows = None
        if self._sweep is not None:
            self._sweep.cancel()
        # All at once: one after the other, thousands of controllers kept a stopping
        # gateway from exiting for longer than its unit lets it (docs/benchmarks.md).
        running = list(self.running.values())
        with stopping_step(f"{len(running)} controllers' tasks"):
            await asyncio.gather(*(controller.stop() for controller in running))
        with stopping_step("the clusters' last statuses"):
            await self._last_statuses(running)
        with stopping_step("giving the leases back"):
            try:
                async with asyncio.timeout(STOP_RELEASE_S):
                    await release_all(self.directory.store, self.replicas.id)
            except (StoreError, TimeoutError) as exc:
                logger.warning("leases not given back (they lapse at their TTL): %s", exc)
        self.running.clear()
        tasks = [task for _, task in self.keepers.values()]
        with stopping_step(f"{len(tasks)} lease keepers and {len(self._background)} tasks"):
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, *self._background, return_exceptions=True)
        self.keepers.clear()

    async def _last_statuses(self, running: list[ClusterController]) -> None:
        """Show as disconnected the clusters no other live replica reaches (one that
        does takes the lease over and writes its own view: nothing to write for those),
        with one read of every status and one batch of compare-and-sets (``swap_all``:
        one transaction on SQLite), for ``STOP_STATUS_S`` at most. A status that changed
        meanwhile is left to whoever holds the cluster next."""
        alone = [c for c in running if c.lease.held() and not self._elsewhere(c.cluster_id)]
        if not alone:
            return
        store = self.directory.store
        try:
            async with asyncio.timeout(STOP_STATUS_S):
                stored = {str(doc.get("id")): doc for doc in await store.list(CLUSTER_STATUS)}
                writes: list[tuple[ClusterController, Doc | None, Doc]] = []
                for controller in alone:
                    if controller.cluster_id not in self.directory.clusters:
                        continue
                    controller.refresh_agents()
                    current = stored.get(controller.cluster_id)
                    value = controller.next_status(current)
                    if value is not None and controller.lease.held():
                        writes.append((controller, current, value))
                revisions = await swap_all(
                    store,
                    CLUSTER_STATUS,
                    [(c.cluster_id, current, value) for c, current, value in writes],
                )
        except (StoreError, TimeoutError) as exc:
            logger.warning("last statuses of %d clusters not written: %r", len(alone), exc)
            return
        for (controller, _, value), revision in zip(writes, revisions, strict=True):
            if revision is not None:
                controller.written(value, revision)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- triggers ---------------------------------------------------------------------

    def _on_tunnel_change(self, cluster_id: str, live: int) -> None:
        if self._stopping or cluster_id not in self.directory.clusters:
            return  # (stopping: ``stop`` writes what is needed, once)
        controller = self.running.get(cluster_id)
        if controller is not None:
            if live:
                controller.refresh_agents()
            elif not self._elsewhere(cluster_id):
                # The last tunnel anywhere is gone: say so before giving the lease up.
                controller.refresh_agents()
                self._flushing.add(cluster_id)
                self._spawn(self._flush_then_release(cluster_id, controller))
                return
            # else: another replica still reaches the cluster; it takes the lease over
            # (and shows its agents) without the cluster looking disconnected meanwhile.
        if live:
            self._keep(cluster_id)
        keeper = self.keepers.get(cluster_id)
        if keeper is not None:
            keeper[0].wake()

    def _elsewhere(self, cluster_id: str) -> bool:
        """Whether another live replica holds a tunnel to the cluster."""
        here = 1 if self.tunnels.count(cluster_id) else 0
        return self.replicas.holding(cluster_id) - here > 0

    async def _flush_then_release(self, cluster_id: str, controller: ClusterController) -> None:
        try:
            await controller.write()
        except StoreError as exc:
            logger.warning("status of %s not written: %s", cluster_id, exc)
        finally:
            self._flushing.discard(cluster_id)
            keeper = self.keepers.get(cluster_id)
            if keeper is not None:
                keeper[0].wake()

    def _on_directory_change(self, kind: str, key: str) -> None:
        if kind == CLUSTER and key not in self.directory.clusters:
            self._spawn(self._forget(key))
        elif kind == CLUSTER and self.tunnels.count(key):
            self._keep(key)
        elif kind == LEASE and key.startswith(LEASE_PREFIX):
            keeper = self.keepers.get(key[len(LEASE_PREFIX) :])
            if keeper is not None and not keeper[0].holding:
                keeper[0].wake()  # released or taken: try now
        elif (
            kind == LEASE
            and key.startswith(SESSION_PREFIX)
            and not self._stopping
            and key != SESSION_PREFIX + self.replicas.id
            and key not in self._sessions_checked
        ):
            # Another process's session: one look at a time.
            self._sessions_checked.add(key)
            self._spawn(self._check_session(key))

    async def _check_session(self, key: str) -> None:
        """Another process's session record changed: if it is gone (that process gave
        every lease up at once, or it was found expired), try its leases now rather than
        at the next attempt. (A renewal changes it too: one read tells them apart.)"""
        try:
            gone = await self.directory.store.get(LEASE, key) is None
        except StoreError:
            gone = False
        finally:
            self._sessions_checked.discard(key)
        if gone:
            for keeper, _ in self.keepers.values():
                if not keeper.holding:
                    keeper.wake()

    async def _forget(self, cluster_id: str) -> None:
        entry = self.keepers.pop(cluster_id, None)
        if entry is not None:
            entry[1].cancel()
            await asyncio.gather(entry[1], return_exceptions=True)
        controller = self.running.pop(cluster_id, None)
        if controller is not None:
            await controller.stop()
        metrics.forget_cluster(cluster_id)

    def _keep(self, cluster_id: str) -> None:
        if cluster_id in self.keepers:
            return
        lease = lease_for(
            self.directory.store,
            LEASE_PREFIX + cluster_id,
            self.replicas.id,
            ttl_s=self.settings.lease_ttl_s,
            clock=self.directory.clock,
        )
        keeper = LeaseKeeper(
            lease,
            want=lambda: self._wants(cluster_id, lease),
            on_change=lambda holding: self._on_lease(cluster_id, lease, holding),
            watched=True,  # woken by the change feed (``_on_directory_change``) and tunnels
        )
        self.keepers[cluster_id] = (keeper, asyncio.create_task(keeper.run()))

    def _wants(self, cluster_id: str, lease: Lease) -> bool:
        if self._stopping:
            # Keep what we hold (``stop`` gives it all up in one write), take nothing new.
            return lease.held()
        return cluster_id in self.directory.clusters and (
            self.tunnels.count(cluster_id) > 0 or cluster_id in self._flushing
        )

    def _on_lease(self, cluster_id: str, lease: Lease, holding: bool) -> None:
        if holding:
            if cluster_id not in self.running:
                controller = ClusterController(self, cluster_id, lease)
                self.running[cluster_id] = controller
                controller.start()
                logger.info("controller of cluster %s runs here", cluster_id)
        else:
            stopping = self.running.pop(cluster_id, None)
            if stopping is not None:
                logger.info("controller of cluster %s stops here", cluster_id)
                self._spawn(stopping.stop())
                metrics.CLUSTER_PROBE_SECONDS.labels(cluster_id).set(0)
        for listener in self._lead_listeners:
            listener(cluster_id, holding)

    # -- what others call -------------------------------------------------------------

    def leads(self, cluster_id: str) -> bool:
        """Whether this process holds the cluster's lease now (and may act for it):
        False already at ``ttl - margin`` after the last renewal, before anyone else can
        take it over."""
        controller = self.running.get(cluster_id)
        return controller is not None and controller.lease.held()

    def reporting(self, cluster_id: str) -> bool:
        """Whether the cluster's controller runs here and shows its agent's reports
        (then the namespaces come from the reports: ``on_namespaces``)."""
        controller = self.running.get(cluster_id)
        return controller is not None and controller.reporter is not None

    def on_namespaces(self, listener: Callable[[str, dict[str, str] | None], None]) -> None:
        """Call ``listener(cluster_id, namespaces)`` when a reporting agent says a
        namespace's project changed (namespace -> project annotation), and with None when
        its reports start or stop (the access sync follows the namespaces itself
        without reports)."""
        self._namespace_listeners.append(listener)

    def reporting_changed(self, cluster_id: str, reporting: bool) -> None:
        for listener in self._namespace_listeners:
            listener(cluster_id, None)

    def namespaces_reported(self, cluster_id: str, namespaces: dict[str, str]) -> None:
        for listener in self._namespace_listeners:
            listener(cluster_id, namespaces)

    def on_lead(self, listener: Callable[[str, bool], None]) -> None:
        """Call ``listener(cluster_id, holding)`` when this process takes a cluster's
        lease or gives it up (the access sync runs where the controller runs)."""
        self._lead_listeners.append(listener)

    async def set_condition(
        self, cluster_id: str, kind: str, status: bool | None, reason: str, message: str
    ) -> None:
        """Set a condition (``Synced`` from the access sync, ``ACESynced`` from the ACE
        sync) on any process: the running controller takes it; otherwise the stored
        status is changed in place and the controller, wherever it runs, keeps it when it
        next writes. ``StoreError`` when the store fails (the caller retries with its
        next sync)."""
        if kind in (CONNECTED, READY):
            raise ValueError(f"{kind} is the cluster controller's own condition")
        now = self.directory.clock()
        await self._change_condition(
            cluster_id, lambda health: health.set_condition(kind, status, reason, message, now)
        )

    async def remove_condition(self, cluster_id: str, kind: str) -> None:
        """Remove an optional condition (``ACESynced`` when direct access is turned off),
        as ``set_condition`` sets one."""
        if kind not in OPTIONAL_CONDITIONS:
            raise ValueError(f"{kind!r} is not an optional condition")
        await self._change_condition(cluster_id, lambda health: health.remove_condition(kind))

    async def _change_condition(
        self, cluster_id: str, change: Callable[[ClusterHealth], bool]
    ) -> None:
        controller = self.running.get(cluster_id)
        if controller is not None and controller.lease.held():
            if change(controller.health):
                controller.changed()
            return
        store = self.directory.store
        for _ in range(5):
            current = await store.get(CLUSTER_STATUS, cluster_id)
            base = current or {"id": cluster_id}
            health = ClusterHealth.from_status(cluster_id, base)
            if not change(health):
                return
            value = {**base, "conditions": health.condition_docs()}
            if current is None:
                value["state"] = "pending"
            if cluster_id not in self.directory.clusters:
                return
            revision = await store.swap(CLUSTER_STATUS, cluster_id, current, value)
            if revision is not None:
                self.directory._apply_own(CLUSTER_STATUS, cluster_id, value, revision)
                return
        raise StoreError(f"status of {cluster_id} kept changing; condition not changed")

    # -- metrics ------------------------------------------------------------------------

    def observe(self, controller: ClusterController) -> None:
        if controller.probe_latency_s is not None:
            metrics.CLUSTER_PROBE_SECONDS.labels(controller.cluster_id).set(
                controller.probe_latency_s
            )

    def status_rows(self) -> Iterator[tuple[str, dict[str, int], dict[str, int], int]]:
        """The stored statuses as the metrics show them (``metrics.ClusterStatuses``)."""
        clusters = self.directory.clusters
        for cluster_id, status in list(self.directory.statuses.items()):
            if cluster_id not in clusters:
                continue
            conditions: dict[str, int] = {}
            for condition in status.conditions:
                kind = str(condition.get("type"))
                if kind in _EXPORTED_CONDITIONS:
                    conditions[kind] = _CONDITION_VALUES.get(str(condition.get("status")), -1)
            states = {state: int(state == status.state) for state in STATES}
            yield cluster_id, states, conditions, len(status.nodes)


_EXPORTED_CONDITIONS: Final = frozenset((CONNECTED, READY, SYNCED, ACE_SYNCED))
_CONDITION_VALUES: Final = {"True": 1, "False": 0}

CLUSTER_CONTROLLERS = web.AppKey("cluster_controllers", ClusterControllers)


async def cluster_context(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: this process's internal listener and the cluster
    controllers (before ``ace_sync.ace_context``, which shares the listener, and
    ``access_sync.access_context``: both follow the controllers' leases)."""
    from pathlib import Path

    from gateway.controllers.downstream import INTERNAL_LISTENER

    listener = InternalListener(app, Path(app[SETTINGS].state_dir))
    await listener.start()
    app[INTERNAL_LISTENER] = listener
    controllers = ClusterControllers(app, listener)
    app[CLUSTER_CONTROLLERS] = controllers
    controllers.start()
    yield
    count = len(controllers.running)
    started = time.monotonic()
    await controllers.stop()
    stopped = time.monotonic()
    await listener.stop()
    logger.info(
        "stopping: %d cluster controllers took %.2f s, the internal listener %.2f s",
        count, stopped - started, time.monotonic() - stopped,
    )  # fmt: skip

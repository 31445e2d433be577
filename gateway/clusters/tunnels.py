"""The agents' side door: ``/v3/connect`` turns a WebSocket into a tunnel session.

``admit`` checks an agent's registration token, ``serve_agent`` runs its tunnel once the
front has accepted its WebSocket (``gateway.front.agents``).

An agent authenticates with its cluster's registration token, then says in its
HELLO metadata how to reach its API server (``Host``) and which credential to use
there (its service-account token, held in memory only, never stored or logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.clusters.replicas import REPLICAS
from gateway.clusters.upstream import StreamPool
from gateway.identity.directory import DIRECTORY, Directory
from gateway.keys import SETTINGS
from gateway.store.records import CLUSTER, REGISTRATION
from tunnel.cluster_state import (
    CAPABILITY_KEY,
    HEARTBEAT,
    REPORT_BURST,
    REPORT_KEY,
    REPORT_RATE,
    STOP_MESSAGE,
    Applied,
    ReportedState,
    ReportError,
    TokenBucket,
    parse_report,
    want_message,
)
from tunnel.errors import SessionClosed, TunnelError
from tunnel.frames import ErrorCode
from tunnel.protocol import Limits, Side
from tunnel.redial import CLUSTER_FULL_REFUSAL, TOKEN_INVALID_REFUSAL
from tunnel.registry import TunnelRegistry
from tunnel.replica_list import MAX_SPREAD_S, SPREAD_KEY
from tunnel.session import Session
from tunnel.transport import Transport

logger = logging.getLogger(__name__)

NODE_HEADER = "X-Herdgate-Node-Name"
AGENT_ID_HEADER = "X-Herdgate-Agent-Id"
"""A random id per agent process: its dials to the replicas it already holds are not new
agents (the agent closes such a duplicate itself once HELLO names the replica)."""


class BadAgentInfo(ValueError):
    pass


@dataclass(frozen=True)
class AgentInfo:
    api_host: bytes
    """``Host`` header for the API server, e.g. ``b"10.43.0.1:443"``."""
    authorization: bytes = field(repr=False)
    """``Authorization`` header value for the API server; secret."""
    node_name: str = ""
    version: str = ""
    ca_cert: str = ""
    """The cluster's API server CA (PEM), for direct kubeconfig contexts."""
    reports: int = 0
    """The cluster-state report format the agent offers (``tunnel.cluster_state``); 0:
    none (an agent from before reports, or one with ``cluster_state: false``)."""

    @classmethod
    def parse(cls, raw: bytes) -> AgentInfo:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # nested arrays: RecursionError, not ValueError
            raise BadAgentInfo("agent metadata is not JSON") from None
        if not isinstance(data, dict):
            raise BadAgentInfo("agent metadata must be an object")
        host = data.get("apiHost")
        auth = data.get("authorization", "")
        if not isinstance(host, str) or not host or not _is_header_safe(host):
            raise BadAgentInfo("apiHost missing or invalid")
        if not isinstance(auth, str) or not _is_header_safe(auth):
            raise BadAgentInfo("authorization invalid")
        node = data.get("node", "")
        version = data.get("version", "")
        ca_cert = data.get("caCert", "")
        reports = data.get(CAPABILITY_KEY, 0)
        return cls(
            api_host=host.encode("ascii"),
            authorization=auth.encode("ascii"),
            node_name=node if isinstance(node, str) else "",
            version=version if isinstance(version, str) else "",
            ca_cert=ca_cert if isinstance(ca_cert, str) and "BEGIN CERTIFICATE" in ca_cert else "",
            reports=reports if type(reports) is int and reports > 0 else 0,
        )

    def updated(self, raw: bytes) -> AgentInfo:
        """Apply an INFO update (today: a rotated credential)."""
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return self
        return self.updated_from(data)

    def updated_from(self, data: Any) -> AgentInfo:
        """``updated`` with the INFO's JSON parsed."""
        auth = data.get("authorization") if isinstance(data, dict) else None
        if isinstance(auth, str) and _is_header_safe(auth):
            return dataclasses.replace(self, authorization=auth.encode("ascii"))
        return self


def _is_header_safe(value: str) -> bool:
    return value.isascii() and value.isprintable() and len(value) < 16384


class AgentLink:
    """One connected agent."""

    def __init__(
        self,
        cluster_id: str,
        session: Session,
        info: AgentInfo,
        remote: str,
        registration_id: str = "",
        agent_id: str = "",
    ) -> None:
        self.cluster_id = cluster_id
        self.agent_id = agent_id
        self.registration_id = registration_id
        """The registration token the agent connected with (revoking it disconnects)."""
        self.session = session
        self.info = info
        self.remote = remote
        self.pool = StreamPool(session)
        self.connected_at = session.loop.time()
        self.reported: ReportedState | None = None
        """The cluster's state as the agent reports it, while reports are wanted."""
        self.last_report = 0.0
        """Loop time of the last report (or heartbeat) from the agent."""
        self._on_report: Callable[[AgentLink, Applied], None] | None = None
        self._budget: TokenBucket | None = None
        self._bad_reports = 0
        self._cut = False
        """Closing for sending INFO frames too fast: the rest is ignored."""

    def __repr__(self) -> str:
        return f"<AgentLink {self.cluster_id} node={self.info.node_name or '-'} {self.remote}>"

    @property
    def is_node_agent(self) -> bool:
        return bool(self.info.node_name)

    @property
    def is_usable(self) -> bool:
        return self.session.is_usable

    @property
    def load(self) -> int:
        return self.session.stream_count

    def on_info(self, raw: bytes) -> None:
        """An INFO from the agent: a rotated credential, or a report of its cluster. More
        than ``REPORT_RATE`` a second on average (``REPORT_BURST`` at once) closes the
        tunnel: an agent that floods them is not behaving."""
        now = self.session.loop.time()
        if self._budget is None:
            self._budget = TokenBucket(REPORT_RATE, REPORT_BURST, now)
        if self._cut:
            return
        if self._budget.take(now) > 0:
            self._cut = True
            if not self.session.is_closed:
                logger.warning("agent %s sends INFO frames too fast; closing its tunnel", self)
                task = asyncio.ensure_future(
                    self.session.close(ErrorCode.PROTOCOL_ERROR, "INFO frames too fast")
                )
                _closing.add(task)
                task.add_done_callback(_closing.discard)
            return
        if raw == HEARTBEAT:  # most INFO frames at idle: known without parsing JSON
            self._heartbeat(now)
            return
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return
        if not isinstance(data, dict):
            return
        if REPORT_KEY in data:
            self._report(data[REPORT_KEY], now)
        if "authorization" in data:
            self.info = self.info.updated_from(data)

    def want_reports(
        self, listener: Callable[[AgentLink, Applied], None], interval_s: float, heartbeat_s: float
    ) -> None:
        """Ask the agent for reports of its cluster's state (it must offer them:
        ``info.reports``); each chunk that arrives is applied to ``reported`` and
        ``listener`` told what it changed."""
        self._on_report = listener
        self.reported = ReportedState()
        self.last_report = self.session.loop.time()
        if self.session.is_usable:
            self.session.send_info(want_message(interval_s, heartbeat_s))

    def stop_reports(self) -> None:
        """No more reports wanted (reports that still arrive are ignored)."""
        if self.reported is None:
            return
        self.reported = None
        self._on_report = None
        if self.session.is_usable:
            with contextlib.suppress(TunnelError):
                self.session.send_info(STOP_MESSAGE)

    def _report(self, value: Any, now: float) -> None:
        reported, listener = self.reported, self._on_report
        if reported is None or listener is None:
            return  # not asked for (another replica's, or after stop_reports): ignored
        try:
            report = parse_report(value)
        except ReportError as exc:
            self._bad_reports += 1
            if self._bad_reports == 1:
                logger.warning("agent %s: a malformed cluster-state report: %s", self, exc)
            return
        self.last_report = now
        listener(self, reported.apply(report))  # heartbeats too: the agent is alive

    def _heartbeat(self, now: float) -> None:
        """``_report`` of the agent's empty report (``HEARTBEAT``), without parsing it."""
        reported, listener = self.reported, self._on_report
        if reported is None or listener is None:
            return
        self.last_report = now
        listener(self, reported.heartbeat())

    def describe(self) -> dict[str, Any]:
        return {
            "node": self.info.node_name,
            "remote": self.remote,
            "version": self.info.version,
            "streams": self.session.stream_count,
        }


_closing: set[asyncio.Future[None]] = set()
"""Tunnels being closed for flooding (kept until done)."""


class StreamQuota:
    """Tunnel streams each user holds per cluster (``tunnel.max_streams_per_user``), so
    that one user's watches cannot take all of a cluster's streams from the others."""

    __slots__ = ("_held", "limit")

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        """0: a quarter of the streams the agent allows (``limit_for``)."""
        self._held: dict[tuple[str, str], int] = {}

    def limit_for(self, peer_max_streams: int) -> int:
        """The cap on a cluster whose agent allows ``peer_max_streams`` streams."""
        return self.limit or max(1, peer_max_streams // 4)

    def take(self, key: tuple[str, str], limit: int) -> bool:
        held = self._held.get(key, 0)
        if held >= limit:
            return False
        self._held[key] = held + 1
        return True

    def give(self, key: tuple[str, str]) -> None:
        held = self._held.get(key, 0) - 1
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)

    def held(self, cluster_id: str, user_id: str) -> int:
        return self._held.get((cluster_id, user_id), 0)


def _bearer(authorization: str | None) -> str:
    scheme, _, credential = (authorization or "").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""


@dataclass(frozen=True)
class Refusal:
    """An agent that may not connect: answer ``status`` with a v3 error (the agent reads
    the head only, so ``message`` is the reason phrase too)."""

    status: int
    code: str
    message: str
    retry_after_s: int = 0
    why: str = ""
    """For the agent, in ``X-Herdgate-Refusal`` (``tunnel.redial``): ``token-invalid``
    (it gives up) or ``cluster-full`` (it waits)."""


@dataclass(frozen=True)
class Admission:
    """An agent whose registration token holds: its tunnel may be set up."""

    cluster_id: str
    registration_id: str
    agent_id: str
    remote: str


FULL_RETRY_AFTER_S = 30
"""What a 429 (the cluster has all the agents it may) tells the agent to wait."""


def _full_message(cluster_id: str, limit: int) -> str:
    return (
        f"cluster {cluster_id} already has {limit} agents connected "
        "(registration.max_agents_per_cluster)"
    )


def _holds(registry: TunnelRegistry[AgentLink], cluster_id: str, agent_id: str) -> bool:
    """Whether this agent already has a tunnel to this process."""
    return bool(agent_id) and any(
        link.agent_id == agent_id and not link.session.is_closed
        for link in registry.links(cluster_id)
    )


def admit(
    app: web.Application, authorization: str | None, agent_id: str, remote: str
) -> Admission | Refusal:
    """``/v3/connect``: check an agent's registration token and the cluster's agent cap
    (before its WebSocket is accepted; ``gateway.front.agents`` does that)."""
    directory = app[DIRECTORY]
    max_agents = app[SETTINGS].registration.max_agents_per_cluster
    registry = app[TUNNELS]
    directory.catch_up()  # the token may have been created through another replica
    registration = directory.registration_for(_bearer(authorization))
    cluster = None if registration is None else directory.clusters.get(registration.cluster_id)
    if registration is None or cluster is None:
        # Unknown, wrong secret, revoked, expired or its cluster deleted: said alike (no
        # hint which), and final: the agent gives up after a few (tunnel.redial).
        return Refusal(
            401, "Unauthorized", "invalid cluster registration token", why=TOKEN_INVALID_REFUSAL
        )
    agent_id = agent_id[:64]
    if registry.count(cluster.id) >= max_agents and not _holds(registry, cluster.id, agent_id):
        logger.warning("agent for %s from %s refused: %d agents", cluster.id, remote, max_agents)
        return Refusal(
            429,
            "TooManyRequests",
            _full_message(cluster.id, max_agents),
            FULL_RETRY_AFTER_S,
            why=CLUSTER_FULL_REFUSAL,
        )
    return Admission(cluster.id, registration.id, agent_id, remote or "?")


async def serve_agent(app: web.Application, admission: Admission, conn: Transport) -> bool:
    """Start an admitted agent's tunnel on its accepted WebSocket: True once it runs
    (then it leaves the registry when its session closes, with no task waiting for
    that: a task per tunnel was memory held for as long as the agent stays); False when
    it did not start (handshake failed, refused)."""
    directory = app[DIRECTORY]
    settings = app[SETTINGS].tunnel
    max_agents = app[SETTINGS].registration.max_agents_per_cluster
    registry = app[TUNNELS]
    replicas = app[REPLICAS]
    cluster_id = admission.cluster_id
    agent_id = admission.agent_id
    remote = admission.remote
    name = f"{cluster_id}@{remote}"
    link: AgentLink | None = None
    session = Session(
        conn,
        Side.SERVER,
        limits=Limits(settings.stream_window, settings.max_frame, settings.max_streams),
        metadata=replicas.hello(cluster_id),
        on_info=lambda raw: link.on_info(raw) if link is not None else None,
        ping_interval_s=settings.ping_interval_s * 1.5,
        idle_timeout_s=settings.idle_timeout_s,
        send_buffer=settings.send_buffer,
        send_timeout_s=settings.send_timeout_s,
        name=name,
    )
    try:
        info = AgentInfo.parse(await session.handshake())
    except TunnelError as exc:
        logger.warning("agent for %s from %s: handshake failed: %s", cluster_id, remote, exc)
        return False
    except BadAgentInfo as bad_info:
        logger.warning("agent for %s from %s: %s", cluster_id, remote, bad_info)
        await session.close(ErrorCode.PROTOCOL_ERROR, str(bad_info))
        return False
    if _holds(registry, cluster_id, agent_id):
        # A second tunnel of one agent to this process: it closes it itself on our HELLO,
        # and one that does not is not let past the cap this way.
        await session.close(ErrorCode.NO_ERROR, "duplicate tunnel")
        return False
    if registry.count(cluster_id) >= max_agents:  # others finished their handshakes first
        await session.close(ErrorCode.REFUSED_STREAM, _full_message(cluster_id, max_agents))
        return False
    # The cluster's CA goes to its record below; the link (kept for the tunnel's life)
    # does without it.
    link = AgentLink(
        cluster_id,
        session,
        dataclasses.replace(info, ca_cert=""),
        remote,
        admission.registration_id,
        agent_id,
    )
    session.start()
    registry.add(link)
    app[REGISTRATION_GUARD].watch(link)
    logger.info(
        "agent connected: cluster %s node %s from %s", cluster_id, info.node_name or "-", remote
    )
    # From here on the link leaves the registry when the session closes, however that
    # comes (the agent's connection dropping, or the front cutting it when what follows
    # fails or is cancelled, closes it).
    session.when_closed(lambda closed: _disconnected(registry, link, closed))
    current = directory.clusters.get(cluster_id)
    if current is not None:
        changes: dict[str, Any] = {"connected_at": directory.clock()}
        if info.ca_cert and info.ca_cert != current.ca_cert:
            changes["ca_cert"] = info.ca_cert
        await directory.patch(CLUSTER, current.id, **changes)
    return True


def _disconnected(
    registry: TunnelRegistry[AgentLink], link: AgentLink, closed: SessionClosed
) -> None:
    logger.info(
        "agent disconnected: cluster %s node %s from %s: %s",
        link.cluster_id,
        link.info.node_name or "-",
        link.remote,
        closed,
    )
    registry.remove(link)
    link.pool.close()


class RegistrationGuard:
    """Disconnects agents whose registration token was revoked or has expired.

    Listens to the directory, which applies this process's writes at once and other
    processes' through the store's change feed, so every gateway process disconnects
    its own tunnels of that token. A token with an expiry gets a timer for it.
    """

    def __init__(self, directory: Directory, registry: TunnelRegistry[AgentLink]) -> None:
        self.directory = directory
        self.registry = registry
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._clusters: dict[str, str] = {}
        """Registration id -> its cluster, for the tokens of live links: a token's links are
        among its cluster's (not a scan of every link: at 10,000 tunnels that scan, once
        per agent connecting, had cost the gateway seconds of CPU after a restart)."""
        directory.on_change(self._on_change)

    def watch(self, link: AgentLink) -> None:
        """A new link: check its token now, and arm its expiry."""
        self._clusters[link.registration_id] = link.cluster_id
        self._check(link.registration_id)

    def _on_change(self, kind: str, key: str) -> None:
        if kind == REGISTRATION:
            self._check(key)

    def _links(self, registration_id: str) -> list[AgentLink]:
        cluster_id = self._clusters.get(registration_id)
        if cluster_id is None:
            return []
        links = [
            link
            for link in self.registry.links(cluster_id)
            if link.registration_id == registration_id and not link.session.is_closed
        ]
        if not links:
            del self._clusters[registration_id]
        return links

    def _check(self, registration_id: str) -> None:
        timer = self._timers.pop(registration_id, None)
        if timer is not None:
            timer.cancel()
        links = self._links(registration_id)
        if not links:
            return
        registration = self.directory.registrations.get(registration_id)
        now = self.directory.clock()
        if registration is None or registration.is_expired(now):
            why = "revoked" if registration is None else "expired"
            for link in links:
                logger.warning(
                    "disconnecting agent %s: its registration token %s was %s",
                    link,
                    registration_id,
                    why,
                )
                task = asyncio.ensure_future(
                    link.session.close(ErrorCode.NO_ERROR, f"registration token {why}")
                )
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            return
        if registration.expires_at is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, registration.expires_at - now)
            self._timers[registration_id] = loop.call_later(
                delay + 0.001, self._check, registration_id
            )

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


async def stop_guard(app: web.Application) -> None:
    app[REGISTRATION_GUARD].close()


RESTART_ACCEPT_PER_S = 250.0
"""Tunnels a restarted gateway process is planned to take per second: a stopping one asks
its agents to spread their reconnections over its tunnel count divided by this (when that
is longer than their own ``reconnect_spread``, 10 s), so 10,000 come back over 40 s instead
of 10 (docs/benchmarks.md, "10,000 agents")."""


def reconnect_spread_s(tunnels: int) -> float:
    return min(MAX_SPREAD_S, tunnels / RESTART_ACCEPT_PER_S)


ACCEPT_SHARE_PER_S = 1 / 8
"""New tunnels a process accepts a second, as a share of the clusters it knows (at least
``ACCEPT_FLOOR_PER_S``), in bursts as large: in no second more than a quarter of them
(issue 20: no handshake storm after a restart, whatever the agents' spread)."""
ACCEPT_FLOOR_PER_S = 20.0
ACCEPT_MAX_WAIT_S = 15.0
"""An accepted agent waits this long at most for its turn (its dial allows 30 s); beyond,
it is told to come back later (503, ``Retry-After``)."""


class AcceptPacer:
    """The turn of each accepted agent's 101 (``gateway.front.agents``): a token bucket
    whose rate follows the number of clusters (sans I/O: the time is given). A cluster
    has at most as many agents waiting for their turn as it may have connected, so one
    registration token cannot queue up the turns of every other cluster's agents."""

    def __init__(self, clusters: Callable[[], int]) -> None:
        self._clusters = clusters
        self._bucket: TokenBucket | None = None
        self._waiting: dict[str, int] = {}

    def turn(self, cluster_id: str, now: float, max_waiting: int) -> float | Refusal:
        """Seconds this cluster's agent waits for its 101, or why it may not wait."""
        if self._waiting.get(cluster_id, 0) >= max_waiting:
            return Refusal(
                429,
                "TooManyRequests",
                f"cluster {cluster_id} already has {max_waiting} agents waiting to connect",
                FULL_RETRY_AFTER_S,
                why=CLUSTER_FULL_REFUSAL,
            )
        wait = self.wait_s(now)
        if wait is None:
            retry = math.ceil(ACCEPT_MAX_WAIT_S)
            return Refusal(503, "ServiceUnavailable", "too many agents connecting at once", retry)
        return wait

    @contextlib.contextmanager
    def waiting_for(self, cluster_id: str) -> Iterator[None]:
        """An agent of ``cluster_id`` waits for its turn meanwhile."""
        self._waiting[cluster_id] = self._waiting.get(cluster_id, 0) + 1
        try:
            yield
        finally:
            left = self._waiting.pop(cluster_id) - 1
            if left:
                self._waiting[cluster_id] = left

    def rate(self) -> float:
        return max(ACCEPT_FLOOR_PER_S, self._clusters() * ACCEPT_SHARE_PER_S)

    def wait_s(self, now: float) -> float | None:
        """Seconds this accept waits for its turn (0: now); None: longer than
        ``ACCEPT_MAX_WAIT_S`` (refused, and no turn taken)."""
        rate = self.rate()
        bucket = self._bucket
        if bucket is None:
            bucket = self._bucket = TokenBucket(rate, rate, now)
        elif bucket.rate != rate:
            bucket.set_rate(rate, rate, now)
        wait = bucket.take(now)
        if wait > ACCEPT_MAX_WAIT_S:
            bucket.give_back()
            return None
        return wait


async def close_all(app: web.Application) -> None:
    """On shutdown: tell every agent over how long to spread its reconnection (INFO) and
    to reconnect (GOAWAY), then drop the tunnels, all at once (one after the other, 10,000
    took seconds)."""
    links = app[TUNNELS].all_links()
    hint = json.dumps({SPREAD_KEY: round(reconnect_spread_s(len(links)), 1)}).encode()
    for link in links:
        if not link.session.is_closed:
            link.session.send_info(hint)
    await asyncio.gather(
        *(link.session.close(ErrorCode.NO_ERROR, "gateway shutting down") for link in links),
        return_exceptions=True,
    )


TUNNELS: web.AppKey[TunnelRegistry[AgentLink]] = web.AppKey("tunnels")
STREAM_QUOTA = web.AppKey("stream_quota", StreamQuota)
REGISTRATION_GUARD = web.AppKey("registration_guard", RegistrationGuard)
ACCEPT_PACER = web.AppKey("accept_pacer", AcceptPacer)

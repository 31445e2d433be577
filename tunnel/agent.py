"""The agent: dials out to the gateway and holds one tunnel to every gateway replica.

The agent never listens on a port. Each gateway replica (a worker process, or a
replica on another host) says in its HELLO who it is and which replicas are live, with
each one's own address (``tunnel.replica_list``). The first tunnel goes through the
gateway's address (``server``: a load balancer, say); then the agent dials every listed
replica it lacks at that replica's own address, with the gateway's TLS server name and
pinned CA, so it reaches all of them whatever the balancer does (one that pins a source
address to one replica included). A replica listed without an address, or a gateway
that sends no list, is reached as before: by dialling the gateway's address again until
the connection lands there (a second tunnel to a replica already held is closed at
once). INFO updates from the gateway bring the list when a replica joins, leaves or
comes back. Every replica can then reach the cluster without a hop through another.

Reconnecting: after a long-lived tunnel drops (a gateway restart), the agent waits a
random time within ``reconnect_spread`` so that a thousand agents do not all
handshake in the same instant; failed attempts back off exponentially with jitter, and
each kind of failure is logged once and then rarely (``tunnel.redial``). When the
gateway says the registration token is invalid (wrong, revoked, expired, its cluster
deleted) a few times in a row, the agent gives up: :class:`TokenRefused`, exit code 3
(its supervisor, systemd or the kubelet, shows the failure; a restart reads the token
again). The dial loop and the credential refresh run under :func:`config.tasks.guard`: a
failure is logged and the loop started again.

Under systemd (``Type=notify``) the agent says READY=1 once its settings and credentials
are loaded and the first tunnel is up, keeps a STATUS= line such as "connected to 2 of 3
gateway replicas" current, and says STOPPING=1 when it begins to close its tunnels.

SIGHUP (:meth:`Agent.reload`) re-reads the settings: ``logging.level`` and the
registration token (``token`` / ``token_file``, used by the tunnels dialled from then on)
are applied, the tunnels stay up, and a warning names every other changed setting (they
need a restart). After READY=1 a reload is bracketed by RELOADING=1 and READY=1.

With ``health_listen`` set (the manifest the gateway serves sets it), the agent serves
``/healthz``, ``/readyz`` (ready while a tunnel is up) and ``/metrics`` from
:attr:`Agent.stats` (``tunnel.probes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from config.notify import Notifier
from config.reload import (
    apply_log_level,
    changed_paths,
    load_again,
    needs_restart,
    warn_restart,
)
from config.schema import AgentSettings
from config.tasks import guard
from config.tls import client_context
from tunnel import h2upstream, wsconn
from tunnel.cluster_state import CAPABILITY_KEY, FORMAT, WANT_KEY, parse_want
from tunnel.cluster_watch import ClusterWatch, Reports
from tunnel.credentials import AgentError, Upstream, cluster_upstream, gateway_ca
from tunnel.errors import TunnelError
from tunnel.frames import ErrorCode
from tunnel.h2upstream import H2Pool
from tunnel.probes import start_probes
from tunnel.protocol import Limits, Side
from tunnel.redial import (
    REFUSAL_HEADER,
    TOKEN_INVALID_REFUSAL,
    Failure,
    Redial,
    backoff_delay,
)
from tunnel.relay import relay, unreachable
from tunnel.replica_list import (
    COUNT_KEY,
    LIST_KEY,
    SPREAD_KEY,
    DirectDials,
    ReplicaAddress,
    parse_spread,
)
from tunnel.replica_list import parse as parse_replica_list
from tunnel.session import Session
from tunnel.stats import AgentStats
from tunnel.streams import TunnelStream
from tunnel.websocket import HandshakeError

__all__ = ["TOKEN_REFUSED_EXIT", "Agent", "AgentError", "TokenRefused", "backoff_delay"]

logger = logging.getLogger(__name__)

VERSION = "0.1.0"
CONNECT_PATH = "/v3/connect"
STABLE_AFTER_S = 30.0
"""A tunnel that lived this long resets the back-off."""
DIAL_TIMEOUT_S = 30.0
"""Connecting, TLS and the WebSocket handshake together."""
DUPLICATE_RETRY_S = 0.1
"""First pause after landing on a replica already held (doubles while it repeats)."""
RELOADABLE = ("logging.level", "token", "token_file")
"""What SIGHUP applies; every other setting needs a restart."""
NEW_REPLICA_SPREAD_S = 1.0
"""A replica the gateway announces while the agent runs (it started, or came back) is
dialled at a random moment within this, so its agents do not all arrive at once."""
TOKEN_REFUSED_EXIT = 3
"""The agent's exit code when the gateway refused its registration token for good
(systemd's unit does not restart it: ``RestartPreventExitStatus=3``)."""


class TokenRefused(AgentError):
    """The gateway said, again and again, that the registration token is not valid."""


@dataclass
class _Tunnel:
    replica_id: str
    session: Session
    ws: wsconn.WebSocketConnection
    started: float


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        registration_token: str,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self._token = registration_token
        self.notifier = notifier or Notifier.disabled()
        self._ready = False
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.tunnels: dict[str, _Tunnel] = {}
        self.wanted = 1
        """How many gateway replicas are live (as the gateway last said)."""
        self.direct = DirectDials()
        """The live replicas' own addresses (as the gateway last said) and the pace of
        dialling each one directly."""
        self.connected = asyncio.Event()
        """Set while at least one tunnel is up."""
        self._wake = asyncio.Event()
        self._redial = Redial(settings.backoff_initial_s, settings.backoff_max_s)
        """Failed dials in a row: the waits, the log lines, giving up (``tunnel.redial``)."""
        self._next_delay = 0.0
        """The wait before the next dial, set by the last failure."""
        self.dial_started = 0.0
        """When the last dial began (``time.time()``): its failure is logged only after the
        connect's answer and whatever else the event loop had to do first."""
        self._gave_up: TokenRefused | None = None
        self._giving_up = asyncio.Event()
        self._after_drop = False
        self._spread_hint_s = 0.0
        """The reconnect spread a stopping gateway asked for (``SPREAD_KEY``), for the next
        reconnection after a drop."""
        self.instance_id = secrets.token_hex(8)
        """Sent with every dial, so a gateway process tells this agent's second tunnel
        to it (a duplicate, closed on HELLO) from another agent (counted in its cap)."""
        self.stats = AgentStats()
        """What ``/metrics`` shows (``health_listen``)."""
        self._lost_tunnel = False
        """A tunnel was lost since the last one was established (the next is a reconnect)."""
        self.reports = Reports()
        """The tunnels that want reports of the cluster's state (``tunnel.cluster_watch``)."""
        self.cluster_watch: ClusterWatch | None = None
        self._cluster_watch_task: asyncio.Task[None] | None = None
        self._upstream: Upstream | None = None
        self._h2: H2Pool | None = None
        """HTTP/2 connections to the API server (``apiserver_http2``)."""

    def ready(self) -> bool:
        """``/readyz``: a tunnel to the gateway is up."""
        return bool(self.tunnels) and not self._stopping

    @property
    def session(self) -> Session | None:
        """Any one live session (tests and tools)."""
        return next(iter(self.tunnels.values())).session if self.tunnels else None

    # -- streams ----------------------------------------------------------------------

    def _on_stream(self, session: Session, upstream: Upstream) -> Callable[[TunnelStream], None]:
        def handler(stream: TunnelStream) -> None:
            if stream.target not in (b"", b"apiserver"):
                stream.reset(ErrorCode.REFUSED_STREAM, "only the API server is reachable")
                return
            pool = self._h2_pool(upstream)
            if pool is None or pool.refused:
                self._spawn(relay(stream, session, upstream, self.stats))
            elif pool.connections:
                self._h2_start(stream, session, upstream, pool)
            else:
                self._spawn(self._h2_first(stream, session, upstream, pool))

        return handler

    def _h2_pool(self, upstream: Upstream) -> H2Pool | None:
        """The HTTP/2 connections to the API server (None: ``apiserver_http2`` is off,
        or the API server is reached without TLS)."""
        if not self.settings.apiserver_http2 or upstream.ssl_h2 is None:
            return None
        if self._h2 is None or self._h2.upstream is not upstream:
            self._h2 = H2Pool(upstream, self.stats)
        return self._h2

    def _h2_start(
        self, stream: TunnelStream, session: Session, upstream: Upstream, pool: H2Pool
    ) -> None:
        self.stats.streams_total += 1

        def fallback(stream: TunnelStream, prefix: bytes) -> None:
            self._spawn(relay(stream, session, upstream, self.stats, prefix, accepted=True))

        h2upstream.start(
            stream, session, pool, fallback, long_only=not self.settings.apiserver_http2_all
        )

    async def _h2_first(
        self, stream: TunnelStream, session: Session, upstream: Upstream, pool: H2Pool
    ) -> None:
        """No HTTP/2 connection yet: dial one (learning whether the API server offers
        ``h2``) before taking the stream."""
        try:
            await pool.connection()
        except h2upstream.NoHttp2:
            await relay(stream, session, upstream, self.stats)
            return
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            unreachable(stream, upstream, exc, self.stats)
            return
        if not stream.is_closed:
            self._h2_start(stream, session, upstream, pool)

    def _on_info(self, raw: bytes, session: Session | None = None) -> None:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return
        if isinstance(data, dict) and WANT_KEY in data and session is not None:
            self._reports_wanted(session, data[WANT_KEY])
        spread = parse_spread(data.get(SPREAD_KEY)) if isinstance(data, dict) else None
        if spread is not None:
            # A stopping gateway with many tunnels: its GOAWAY follows; reconnect within
            # this (or our own spread, if longer) so that its successor is not stormed.
            self._spread_hint_s = spread
        if isinstance(data, dict) and self._learn_replicas(data, NEW_REPLICA_SPREAD_S):
            self._report()
            self._wake.set()

    def _reports_wanted(self, session: Session, value: Any) -> None:
        """The gateway (one replica, through ``session``) asks for reports of the
        cluster's state, or no longer wants them."""
        wanted = parse_want(value) if self.settings.cluster_state else None
        if wanted is None:
            self.reports.drop(session)
            if not self.reports:
                self._stop_cluster_watch()
            return
        self.reports.want(session)
        watch = self.cluster_watch
        if watch is not None:
            watch.changed()  # the new one gets a full snapshot with the next report
            return
        assert self._upstream is not None
        watch = ClusterWatch(
            self._upstream,
            self.reports,
            wanted.interval_s,
            wanted.heartbeat_s,
            f"herdgate-agent/{VERSION} cluster-state",
            self._h2_pool(self._upstream),
        )
        self.cluster_watch = watch
        logger.info(
            "reporting the cluster's state to the gateway (every %.0f s)", wanted.interval_s
        )
        self._cluster_watch_task = asyncio.get_running_loop().create_task(
            guard(watch.run, "cluster state reports", logger)
        )

    def _stop_cluster_watch(self) -> None:
        task, self._cluster_watch_task = self._cluster_watch_task, None
        self.cluster_watch = None
        if task is not None:
            task.cancel()
            logger.info("the gateway no longer wants reports of the cluster's state")

    def _learn_replicas(self, data: dict[str, Any], spread_s: float) -> bool:
        """Take the replica count and list from a HELLO or INFO; True if either changed."""
        changed = False
        listed = parse_replica_list(data.get(LIST_KEY))
        if listed is not None:
            before = self.direct.known
            self.direct.update(listed, asyncio.get_running_loop().time(), spread_s)
            if listed != before:
                changed = True
                logger.info(
                    "gateway replicas: %s",
                    ", ".join(f"{r.id} at {r.url or '-'}" for r in listed) or "none",
                )
        count = data.get(COUNT_KEY)
        usable = isinstance(count, int) and not isinstance(count, bool) and count >= 1
        if isinstance(count, int) and usable and count != self.wanted:
            if spread_s:
                logger.info("the gateway now has %d replicas", count)
            self.wanted = count
            changed = True
        return changed

    def _report(self) -> None:
        """READY=1 with the first tunnel; the tunnel count as systemd's STATUS= line."""
        self.stats.tunnels = len(self.tunnels)
        self.stats.wanted = self.wanted
        if self._stopping:
            return
        text = connection_status(len(self.tunnels), self.wanted)
        if self.tunnels and not self._ready:
            self._ready = True
            self.notifier.ready(text)
        else:
            self.notifier.status(text)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _metadata(self, upstream: Upstream) -> bytes:
        metadata: dict[str, Any] = {
            "version": VERSION,
            "node": self.settings.node_name,
            "apiHost": upstream.host_header,
            "authorization": upstream.authorization,
            "caCert": upstream.ca_pem,
        }
        if self.settings.cluster_state:
            metadata[CAPABILITY_KEY] = FORMAT
        return json.dumps(metadata).encode()

    # -- one connection ---------------------------------------------------------------

    async def _dial(
        self, ca_pem: str | None, upstream: Upstream, target: ReplicaAddress | None = None
    ) -> str:
        """Open one tunnel; ``"new"``, ``"duplicate"`` (replica already held) or ``"failed"``.

        ``target``: dial that replica at its own address (else the gateway's address).
        """
        self.dial_started = time.time()
        if target is not None:
            return await self._dial_direct(ca_pem, upstream, target)
        url = self.settings.server.rstrip("/") + CONNECT_PATH
        try:
            ws = await wsconn.dial(url, self._headers(), _context(ca_pem), DIAL_TIMEOUT_S)
        except HandshakeError as exc:
            self._failed(*refusal(exc, url))
            return "failed"
        except (OSError, TimeoutError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            self._failed(Failure.UNREACHABLE, f"cannot connect to {url}: {reason}")
            return "failed"
        session = self._session(ws, upstream)
        try:
            gateway = json.loads(await session.handshake() or b"{}")
        except (TunnelError, ValueError) as exc:
            self._failed(Failure.UNREACHABLE, f"tunnel handshake with {url} failed: {exc}")
            await ws.close()
            return "failed"
        return await self._established(session, ws, gateway)

    async def _dial_direct(
        self, ca_pem: str | None, upstream: Upstream, target: ReplicaAddress
    ) -> str:
        """Dial one replica at its own address, with the gateway's URL for the TLS server
        name and ``Host`` (the certificate names the public host, the CA stays pinned);
        a failure slows down only that replica (``DirectDials``)."""
        address = target.address
        assert address is not None
        where = f"replica {target.id} at {address[0]}:{address[1]}"
        url = self.settings.server.rstrip("/") + CONNECT_PATH
        try:
            ws = await wsconn.dial(
                url, self._headers(), _context(ca_pem), DIAL_TIMEOUT_S, connect_to=address
            )
        except HandshakeError as exc:
            # A refusal (a 429's Retry-After kept) slows down this replica only: the
            # agent gives up on its token only through the gateway's address.
            _, reason, retry_after_s = refusal(exc, url)
            return self._direct_failed(target, f"{where}: {reason}", retry_after_s)
        except (OSError, TimeoutError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            return self._direct_failed(target, f"cannot reach {where}: {reason}")
        session = self._session(ws, upstream)
        try:
            gateway = json.loads(await session.handshake() or b"{}")
        except (TunnelError, ValueError) as exc:
            await ws.close()
            return self._direct_failed(target, f"tunnel handshake with {where} failed: {exc}")
        outcome = await self._established(session, ws, gateway, f"{address[0]}:{address[1]}")
        loop = asyncio.get_running_loop()
        if outcome == "duplicate":
            delay = self.direct.landed_on_held(target.id, loop.time())
            logger.debug("%s answered as a replica already held; again in %.1f s", where, delay)
        else:
            self.direct.connected(target.id)
        return outcome

    def _direct_failed(
        self, target: ReplicaAddress, reason: str, retry_after_s: float = 0.0
    ) -> str:
        now = asyncio.get_running_loop().time()
        delay = self.direct.failed(target.id, now, retry_after_s)
        # The first failure in a row at INFO (a replica stopping shows here), then DEBUG.
        level = logging.INFO if self.direct.failures(target.id) == 1 else logging.DEBUG
        logger.log(level, "%s; trying it again in %.1f s", reason, delay)
        return "failed"

    def _headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._token}"}
        if self.settings.node_name:
            headers["X-Herdgate-Node-Name"] = self.settings.node_name
        headers["X-Herdgate-Agent-Id"] = self.instance_id
        return headers

    def _session(self, ws: wsconn.WebSocketConnection, upstream: Upstream) -> Session:
        tunnel = self.settings.tunnel
        made: list[Session] = []
        session = Session(
            ws,
            Side.CLIENT,
            limits=Limits(tunnel.stream_window, tunnel.max_frame, tunnel.max_streams),
            metadata=self._metadata(upstream),
            on_info=lambda raw: self._on_info(raw, made[0] if made else None),
            ping_interval_s=tunnel.ping_interval_s,
            idle_timeout_s=tunnel.idle_timeout_s,
            send_buffer=tunnel.send_buffer,
            send_timeout_s=tunnel.send_timeout_s,
            name=self.settings.server,
        )
        made.append(session)
        session.set_stream_handler(self._on_stream(session, upstream))
        return session

    async def _established(
        self, session: Session, ws: wsconn.WebSocketConnection, gateway: Any, via: str = ""
    ) -> str:
        """The handshake is done: keep the tunnel (``"new"``) or close a second one to
        a replica already held (``"duplicate"``)."""
        settings = self.settings
        replica = str(gateway.get("replicaId", "")) if isinstance(gateway, dict) else ""
        if isinstance(gateway, dict):
            self._learn_replicas(gateway, 0.0)
        if replica in self.tunnels:
            await session.close(ErrorCode.NO_ERROR, "duplicate tunnel")
            await ws.close()
            return "duplicate"
        loop = asyncio.get_running_loop()
        entry = _Tunnel(replica, session, ws, loop.time())
        self.tunnels[replica] = entry
        self._redial.connected()
        if self._lost_tunnel:
            self._lost_tunnel = False
            self.stats.reconnects += 1
        session.start()
        self.connected.set()
        logger.info(
            "tunnel to %s established (replica %s, %d of %d)",
            via or settings.server,
            replica or "-",
            len(self.tunnels),
            self.wanted,
        )
        self._report()
        self._spawn(self._watch(entry))
        return "new"

    def _failed(self, kind: Failure, reason: str, retry_after_s: float = 0.0) -> None:
        """A dial failed: log it (or not: ``tunnel.redial``), set the wait, maybe give up."""
        now = asyncio.get_running_loop().time()
        verdict = self._redial.failed(kind, reason, now, retry_after_s, bool(self.tunnels))
        logger.log(verdict.level, "%s", verdict.message)
        self._next_delay = verdict.delay_s
        if verdict.give_up and self._gave_up is None:
            self._gave_up = TokenRefused(
                f"{reason} (unknown, revoked or expired, or its cluster was deleted); get a "
                "new one from the cluster's owner (POST /v3/clusterregistrationtokens) and "
                "start the agent with it"
            )
            self._giving_up.set()

    async def _watch(self, entry: _Tunnel) -> None:
        try:
            closed = await entry.session.wait_closed()
            replica = entry.replica_id or "-"
            goaway = entry.session.goaway
            if self._stopping:
                logger.info("tunnel to replica %s closed (agent stopping)", replica)
            elif goaway is not None and goaway[0] is ErrorCode.NO_ERROR:
                # The gateway ended it in order (it is stopping, or the token was revoked).
                logger.info(
                    "the gateway closed the tunnel to replica %s: %s; reconnecting",
                    replica,
                    goaway[1] or "no reason given",
                )
            else:
                logger.warning("tunnel to replica %s closed: %s", replica, closed)
        finally:
            self.reports.drop(entry.session)
            if not self.reports:
                self._stop_cluster_watch()
            if self.tunnels.get(entry.replica_id) is entry:
                del self.tunnels[entry.replica_id]
                self._lost_tunnel = True
            if not self.tunnels:
                self.connected.clear()
            self._report()
            uptime = asyncio.get_running_loop().time() - entry.started
            if uptime >= STABLE_AFTER_S:
                self._redial.reset()
                self._after_drop = True
            else:
                self._next_delay = self._redial.lost_soon()
            with contextlib.suppress(Exception):
                await entry.ws.close()
            self._wake.set()

    # -- SIGHUP -----------------------------------------------------------------------

    def reload(self, load: Callable[[], tuple[AgentSettings, str]]) -> bool:
        """Apply what can change while the tunnels stay up; False if nothing was.

        ``load`` re-reads the settings and the registration token (ConfigError if they
        no longer load: the running settings are kept).
        """
        announce = self._ready and not self._stopping
        if announce:
            self.notifier.reloading("reloading settings")
        try:
            return self._reload(load)
        except Exception:  # a bug: log it, keep the tunnels
            logger.exception("reload failed")
            return False
        finally:
            if announce:
                self.notifier.ready(connection_status(len(self.tunnels), self.wanted))

    def _reload(self, load: Callable[[], tuple[AgentSettings, str]]) -> bool:
        loaded = load_again(load)
        if loaded is None:
            return False
        new, token = loaded
        old = self.settings
        changed = changed_paths(old, new)
        logging_settings = apply_log_level(old.logging, new.logging)
        if token != self._token:
            self._token = token
            logger.info("reload: new registration token; tunnels dialled from now on use it")
        warn_restart(needs_restart(changed, RELOADABLE))
        self.settings = dataclasses.replace(
            old, token=new.token, token_file=new.token_file, logging=logging_settings
        )
        logger.info("reloaded settings (%d changed)", len(changed))
        logger.debug("reload: log level %s", logging_settings.level)
        return True

    # -- the loop -----------------------------------------------------------------------

    def _delay_before_dial(self, duplicates: int) -> float:
        settings = self.settings
        rng = random.SystemRandom()
        if duplicates:
            # Landed on a replica we hold: try again soon, the next one may differ.
            return rng.uniform(0, DUPLICATE_RETRY_S * 2 ** min(duplicates, 4))
        if self._after_drop:
            # Everyone lost the gateway at once: spread the reconnects out (over longer if
            # the gateway said so before it went).
            self._after_drop = False
            self._next_delay = 0.0
            spread, self._spread_hint_s = max(settings.reconnect_spread_s, self._spread_hint_s), 0.0
            return rng.uniform(0, spread)
        delay, self._next_delay = self._next_delay, 0.0
        return delay

    async def run(self, stop: asyncio.Event) -> None:
        """Hold the tunnels until ``stop`` is set, then close them."""
        probes = None
        if self.settings.health_listen:
            probes = await start_probes(self.settings.health_listen, self.stats, self.ready)
        try:
            await self._run(stop)
        finally:
            if probes is not None:
                await probes.cleanup()

    async def _run(self, stop: asyncio.Event) -> None:
        self.notifier.status("loading settings and credentials")
        # The cluster's credentials first: a local problem is reported before the
        # gateway is contacted.
        upstream = await cluster_upstream(self.settings)
        self._upstream = upstream
        if not self.settings.apiserver_spare_connection:
            upstream.spare.close()  # a closed spare dials nothing
        ca_pem = await gateway_ca(self.settings)
        self.notifier.status(f"connecting to {self.settings.server}")
        if upstream.refresh is not None:
            refresh = upstream.refresh
            self._spawn(
                guard(
                    lambda: self._refresh_credentials(upstream, refresh),
                    "API server credential refresh",
                    logger,
                )
            )
        dialling = asyncio.get_running_loop().create_task(
            guard(lambda: self._keep_connected(ca_pem, upstream), "tunnel dialling", logger)
        )
        waits = {
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self._giving_up.wait()),
        }
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            dialling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dialling
        self._stopping = True
        self.notifier.stopping("closing tunnels")
        for entry in list(self.tunnels.values()):
            await entry.session.close(ErrorCode.NO_ERROR, "agent stopping")
            await entry.ws.close()
        self._stop_cluster_watch()
        for task in list(self._tasks):
            task.cancel()
        if self._h2 is not None:
            self._h2.close()
        upstream.spare.close()
        if self._gave_up is not None:
            raise self._gave_up

    async def _keep_connected(self, ca_pem: str | None, upstream: Upstream) -> None:
        """Dial until a tunnel is held to every gateway replica, and again whenever one
        drops; never returns (cancelled when the agent stops)."""
        duplicates = 0
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            held = self.tunnels.keys()
            if not self._lacking():
                await self._wake.wait()
                continue
            if self.tunnels:
                # First contact made: the replicas we lack, each at its own address.
                target = self.direct.next(held, loop.time())
                if target is not None:
                    outcome = await self._dial(ca_pem, upstream, target)
                    self.stats.direct_dials[outcome] = self.stats.direct_dials.get(outcome, 0) + 1
                    continue
                wait = self.direct.wait_s(held, loop.time())
                if wait is not None:  # each one we lack failed just now: its turn comes
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._wake.wait()
                    continue
            # The gateway's address: the first tunnel, a replica without an address of
            # its own, or a gateway that sends no list.
            delay = self._delay_before_dial(duplicates)
            if delay:
                logger.debug("dialling again in %.1f s", delay)
                await asyncio.sleep(delay)
            outcome = await self._dial(ca_pem, upstream)
            self.stats.dials[outcome] = self.stats.dials.get(outcome, 0) + 1
            if outcome == "new":
                duplicates = 0
            elif outcome == "duplicate":
                duplicates += 1
            elif outcome == "failed":
                duplicates = 0
                if not self._next_delay:  # (a failure _dial did not describe)
                    self._failed(Failure.UNREACHABLE, f"cannot connect to {self.settings.server}")

    def _lacking(self) -> bool:
        """Whether a live replica has no tunnel from this agent (by the gateway's list,
        or by its count when it sends no list)."""
        if self.direct.known:
            return bool(self.direct.lacking(self.tunnels.keys()))
        return len(self.tunnels) < self.wanted

    async def _refresh_credentials(
        self, upstream: Upstream, refresh: Callable[[], Awaitable[str]]
    ) -> None:
        """Every ``credentials_refresh_s``, read the API server credential again and send
        the tunnels a new one; never returns."""
        while True:
            await asyncio.sleep(self.settings.credentials_refresh_s)
            try:
                value = await refresh()
            except Exception as exc:  # noqa: BLE001 - keep the tunnels, retry next period
                logger.warning("cannot refresh the API server credential: %s", exc)
                continue
            if value != upstream.authorization:
                upstream.authorization = value
                message = json.dumps({"authorization": value}).encode()
                for entry in list(self.tunnels.values()):
                    if entry.session.is_usable:
                        entry.session.send_info(message)
                logger.info("API server credential rotated")


def _context(ca_pem: str | None) -> ssl.SSLContext:
    return client_context(ca_data=ca_pem) if ca_pem else client_context()


def connection_status(connected: int, wanted: int) -> str:
    """The agent's state in one line: "connected to 1 of 2 gateway replicas; connecting"."""
    text = f"connected to {connected} of {wanted} gateway replicas"
    return text if connected >= wanted else text + "; connecting"


def refusal(exc: HandshakeError, url: str) -> tuple[Failure, str, float]:
    """What an answer other than 101 to ``GET /v3/connect`` means: the kind of failure,
    its reason for the log, and the ``Retry-After`` (0: none)."""
    answered = f"HTTP {exc.status} "
    if not str(exc).startswith(answered):  # no HTTP answer: the connection failed
        return Failure.UNREACHABLE, f"cannot connect to {url}: {exc}", 0.0
    phrase = str(exc).removeprefix(answered)
    if exc.status == 401 and exc.headers.get(REFUSAL_HEADER.lower()) == TOKEN_INVALID_REFUSAL:
        return Failure.TOKEN_INVALID, f"the gateway rejected the registration token: {phrase}", 0.0
    try:
        retry_after = float(exc.headers.get("retry-after", ""))
    except ValueError:
        retry_after = 0.0
    if exc.status == 429:
        return Failure.REFUSED, f"the gateway refused this agent for now: {phrase}", retry_after
    return Failure.REFUSED, f"{url} refused the tunnel: {exc}", retry_after

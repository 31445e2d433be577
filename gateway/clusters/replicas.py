"""The gateway's replica model: every process is a replica, and agents reach all of them.

Each gateway process — a worker on this host or a replica on another — registers in
the shared store with a heartbeat, its own address (``replica.advertise_url``) and the
clusters it holds tunnels for. It tells every agent, in its HELLO and then in an INFO
whenever the set changes, its own id and the live replicas with their addresses
(``tunnel.replica_list``); the agent dials each replica it lacks at that address, so it
holds one tunnel to each whatever the load balancer in front does (a replica without an
address is reached by dialling the gateway's address until the connection lands
there). So any replica can serve any request from its own tunnels, with no hop between
replicas, and several workers on one host behave exactly like several hosts (the
konnectivity "server count" model, with Teleport's "agents dial every proxy" discovery).
There is no leader among replicas: work that must run in one process at a time
runs under a store lease of its own (``gateway.controllers.lease``: each cluster's
controller with its access and ACE syncs, the group refresh), and the housekeeping here
(forgetting long-dead replicas' records) is idempotent, so any replica may do it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

from aiohttp import web

from gateway.identity.directory import Directory
from gateway.store.base import StoreError
from gateway.store.records import REPLICA, Replica
from tunnel.replica_list import COUNT_KEY, LIST_KEY, ReplicaAddress, encode
from tunnel.session import Session

logger = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
LIVE_S = 15.0
"""A replica whose heartbeat is older than this is considered gone."""
FORGET_S = 3600.0
"""Records of replicas silent this long are deleted (by any live replica)."""


class _Link(Protocol):
    @property
    def cluster_id(self) -> str: ...

    @property
    def session(self) -> Session: ...


class Tunnels(Protocol):
    """What the replica set reads of this process's tunnels
    (``gateway.clusters.tunnels.TUNNELS``)."""

    def on_change(self, listener: Callable[[str, int], None]) -> None: ...

    def count(self, cluster_id: str) -> int: ...

    def all_links(self) -> Sequence[_Link]: ...


def new_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class ReplicaSet:
    def __init__(
        self,
        directory: Directory,
        tunnels: Tunnels,
        replica_id: str | None = None,
        url: str = "",
    ) -> None:
        self.directory = directory
        self.tunnels = tunnels
        self.id = replica_id or new_replica_id()
        self.url = url
        """Where agents dial this replica itself (empty: through the gateway's address)."""
        self.started = directory.clock()
        self._changed = asyncio.Event()
        self._clusters: tuple[str, ...] | None = None
        """The clusters this process holds tunnels for, sorted (None: to be read again:
        the tunnels changed)."""
        tunnels.on_change(self._on_tunnel_change)
        self._announced: tuple[ReplicaAddress, ...] = ()
        # A replica joining or leaving changes the count agents must be told about.
        directory.on_change(self._on_directory_change)

    # -- queries (hot enough to be cheap: dictionary scans of a handful of records) -----

    def live(self) -> list[Replica]:
        now = self.directory.clock()
        live = [r for r in self.directory.replicas.values() if now - r.heartbeat < LIVE_S]
        if not any(r.id == self.id for r in live):
            live.append(self._record(now))  # we are live even before our first heartbeat
        return sorted(live, key=lambda r: r.id)

    def count(self) -> int:
        return len(self.live())

    def addresses(self) -> tuple[ReplicaAddress, ...]:
        """The live replicas and where agents dial each (sorted by id)."""
        return tuple(ReplicaAddress(r.id, r.url) for r in self.live())

    def hello(self, cluster_id: str) -> bytes:
        """The HELLO metadata for an agent's tunnel."""
        return self._message({"clusterId": cluster_id, "replicaId": self.id})

    def _message(self, fields: dict[str, object]) -> bytes:
        listed = self.addresses()
        return json.dumps({**fields, COUNT_KEY: len(listed), LIST_KEY: encode(listed)}).encode()

    def has_tunnel_anywhere(self, cluster_id: str) -> bool:
        return self.holding(cluster_id) > 0

    def holding(self, cluster_id: str) -> int:
        """How many live replicas hold a tunnel for the cluster (this one included)."""
        here = 1 if self.tunnels.count(cluster_id) else 0
        return here + sum(1 for r in self.live() if r.id != self.id and cluster_id in r.clusters)

    # -- heartbeat ---------------------------------------------------------------------

    def _on_tunnel_change(self, _cluster: str, _count: int) -> None:
        self._clusters = None
        self._changed.set()

    def _record(self, now: float) -> Replica:
        clusters = self._clusters
        if clusters is None:
            clusters = tuple(sorted({link.cluster_id for link in self.tunnels.all_links()}))
            self._clusters = clusters
        return Replica(
            self.id, socket.gethostname(), os.getpid(), self.started, now, clusters, self.url
        )

    async def heartbeat(self) -> None:
        await self.directory.put(REPLICA, self._record(self.directory.clock()))

    async def run(self) -> None:
        """Heartbeat every few seconds, and soon after our tunnels change."""
        with contextlib.suppress(StoreError):
            await self.forget_crashed_local()
        while True:
            try:
                await self.heartbeat()
                await self._forget_dead()
            except StoreError as exc:
                logger.warning("replica heartbeat failed: %s; retrying", exc)
            self._announce_if_changed()  # also notices replicas whose heartbeat stopped
            self._changed.clear()
            try:
                async with asyncio.timeout(HEARTBEAT_S):
                    await self._changed.wait()
                await asyncio.sleep(0.5)  # coalesce a burst of tunnel changes
            except TimeoutError:
                pass

    def _on_directory_change(self, kind: str, key: str) -> None:
        if kind == REPLICA and key != self.id:
            self._announce_if_changed()

    def _announce_if_changed(self) -> None:
        listed = self.addresses()
        if listed != self._announced:
            self._announced = listed
            self._announce()

    def _announce(self) -> None:
        """Tell connected agents which replicas to hold tunnels to, and where each is
        (an INFO frame: the count for older agents, the list for newer ones)."""
        message = self._message({})
        for link in self.tunnels.all_links():
            if link.session.is_usable:
                link.session.send_info(message)

    async def _forget_dead(self) -> None:
        """Delete the records of replicas silent for ``FORGET_S`` (deleting one twice is
        harmless; one that comes back writes its record again with its next heartbeat)."""
        now = self.directory.clock()
        for replica in list(self.directory.replicas.values()):
            if now - replica.heartbeat > FORGET_S:
                await self.directory.delete(REPLICA, replica.id)

    async def forget_crashed_local(self) -> None:
        """Delete records of earlier processes on this host that are no longer running
        (a crashed or killed worker), so agents are not told to look for them."""
        host = socket.gethostname()
        for replica in list(self.directory.replicas.values()):
            if replica.host == host and replica.id != self.id and not _running(replica.pid):
                await self.directory.delete(REPLICA, replica.id)

    async def leave(self) -> None:
        await self.directory.delete(REPLICA, self.id)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


REPLICAS = web.AppKey("replicas", ReplicaSet)

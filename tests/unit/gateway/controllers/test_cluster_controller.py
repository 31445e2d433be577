"""The controller's status writes on the SQLite store, two processes sharing the file:
written only on change, fenced by the lease generation, ``Synced`` set from anywhere."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web

from gateway.clusters.replicas import REPLICAS, ReplicaSet
from gateway.clusters.tunnels import TUNNELS, AgentLink
from gateway.controllers.cluster_controller import (
    LEASE_PREFIX,
    ClusterController,
    ClusterControllers,
)
from gateway.controllers.cluster_health import SYNCED
from gateway.controllers.lease import Lease
from gateway.identity.directory import DIRECTORY, Directory
from gateway.store.records import CLUSTER, CLUSTER_STATUS, Cluster
from gateway.store.sqlite import SQLiteStore
from tunnel.registry import TunnelRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


Process = tuple[ClusterControllers, Directory, SQLiteStore]


async def _process(path: Path, clock: Clock, replica: str) -> Process:
    store = await SQLiteStore(path).open()
    directory = Directory(store, clock=clock)
    await directory.load()
    app = web.Application()
    app[DIRECTORY] = directory
    tunnels: TunnelRegistry[AgentLink] = TunnelRegistry()
    app[TUNNELS] = tunnels
    app[REPLICAS] = ReplicaSet(directory, tunnels, replica_id=replica)
    return ClusterControllers(app, cast(Any, None)), directory, store


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[Process, Process, Clock]]:
    clock = Clock()
    path = tmp_path / "store.db"
    first = await _process(path, clock, "r-1")
    await first[1].put(CLUSTER, Cluster("c-1", "one", clock.now))
    second = await _process(path, clock, "r-2")
    try:
        yield first, second, clock
    finally:
        await first[2].close()
        await second[2].close()


async def _controller(process: Process, clock: Clock) -> ClusterController:
    controllers, _, store = process
    replica = controllers.replicas.id
    lease = Lease(store, LEASE_PREFIX + "c-1", replica, clock=clock, monotonic=clock)
    assert await lease.try_acquire()
    return ClusterController(controllers, "c-1", lease)


def _synced(doc: dict[str, Any] | None) -> dict[str, Any]:
    assert doc is not None
    return next(c for c in doc["conditions"] if c["type"] == SYNCED)


async def test_status_is_written_once_per_change(two: tuple[Process, Process, Clock]) -> None:
    first, _, clock = two
    controller = await _controller(first, clock)
    controller.health.agents_changed((), clock.now)
    assert await controller.write()
    revision = await first[2].revision()
    clock.now += 10
    assert not await controller.write()  # nothing changed: no write at all
    assert await first[2].revision() == revision
    controller.health.probe_failed("HTTP500", "down", clock.now)
    assert await controller.write()
    stored = first[1].statuses["c-1"]
    assert stored.holder == "r-1" and stored.generation == 1


async def test_a_task_writes_the_status_only_while_a_write_is_due(
    two: tuple[Process, Process, Clock],
) -> None:
    """A change starts one writer (more changes meanwhile join it); once written, no task
    waits for the next change (a controller per connected cluster, thousands of them)."""
    first, _, clock = two
    controller = await _controller(first, clock)
    assert controller._writer is None
    controller.health.agents_changed((), clock.now)
    controller.changed()
    writer = controller._writer
    assert writer is not None
    controller.changed()
    assert controller._writer is writer
    await asyncio.wait_for(writer, 5.0)
    assert controller._writer is None
    assert first[1].statuses["c-1"].holder == "r-1"
    await controller.stop()
    controller.changed()  # stopped: nothing starts
    assert controller._writer is None


async def test_synced_set_where_the_controller_does_not_run_is_kept(
    two: tuple[Process, Process, Clock],
) -> None:
    first, second, clock = two
    controller = await _controller(first, clock)
    assert await controller.write()
    # The access sync runs on the other process: it sets Synced there.
    await second[0].set_condition("c-1", SYNCED, True, "Synced", "all bindings in step")
    synced = _synced(await second[2].get(CLUSTER_STATUS, "c-1"))
    assert synced["status"] == "True" and synced["reason"] == "Synced"
    # The holder writes its next change without losing it.
    controller.health.probe_ok(clock.now + 1)
    assert await controller.write()
    kept = _synced(await first[2].get(CLUSTER_STATUS, "c-1"))
    assert kept == synced
    with pytest.raises(ValueError):
        await second[0].set_condition("c-1", "Ready", True, "", "")


async def test_a_stale_holder_cannot_overwrite_its_successor(
    two: tuple[Process, Process, Clock],
) -> None:
    first, second, clock = two
    old = await _controller(first, clock)
    assert await old.write()
    clock.now += 100  # the first holder's lease lapsed unseen (a long pause)
    new = await _controller(second, clock)
    assert new.lease.generation == 2
    new.health.probe_ok(clock.now)
    assert await new.write()
    # The old holder wakes up, thinks it still may act, and tries to write.
    old.lease._valid_until = float("inf")
    old.health.probe_failed("HTTP500", "stale view", clock.now)
    assert not await old.write()  # fenced by the generation
    stored = await first[2].get(CLUSTER_STATUS, "c-1")
    assert stored is not None and stored["holder"] == "r-2" and stored["generation"] == 2

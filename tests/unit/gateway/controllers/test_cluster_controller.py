"""The controller's status writes on the SQLite store, two processes sharing the file:
written only on change, fenced by the lease generation, ``Synced`` set from anywhere."""

from __future__ import annotations

import asyncio
import json
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
from gateway.controllers.cluster_health import READY, SYNCED
from gateway.controllers.lease import Lease
from gateway.identity.directory import DIRECTORY, Directory
from gateway.store.records import CLUSTER, CLUSTER_STATUS, Cluster
from gateway.store.sqlite import SQLiteStore
from tunnel.cluster_state import (
    HEARTBEAT,
    REPORT_KEY,
    Applied,
    Readiness,
    ReportedState,
    State,
    encode_reports,
    parse_report,
)
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


class _Reporter:
    """What the controller reads of its reporting ``AgentLink``."""

    def __init__(self) -> None:
        self.reported = ReportedState()
        self.last_report = 0.0

    def send(self, old: State | None, new: State) -> Applied:
        applied = Applied()
        for raw in encode_reports(old, new) or [HEARTBEAT]:
            applied = self.reported.apply(parse_report(json.loads(raw)[REPORT_KEY]))
        return applied

    def stop_reports(self) -> None:
        pass


async def test_a_report_that_changed_nothing_costs_no_look_yet_ends_a_silence(
    two: tuple[Process, Process, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat (most reports at idle, from thousands of agents) changes nothing the
    status shows: the controller looks no further. After a silence (Ready Unknown) it
    is what brings Ready back, and a real change is shown as before."""
    first, _, clock = two
    controller = await _controller(first, clock)
    link = _Reporter()
    controller.reporter = cast(AgentLink, link)
    down = State(ready=Readiness(False, "Unreachable", "connection refused"))
    controller._on_report(cast(AgentLink, link), link.send(None, down))
    ready = controller.health.conditions[READY]
    assert (ready.status, ready.reason) == ("False", "Unreachable")

    looks: list[str] = []
    for name in ("probe_ok", "probe_failed", "version_seen"):
        method = getattr(controller.health, name)
        monkeypatch.setattr(
            controller.health, name, lambda *a, _n=name, _m=method: (looks.append(_n), _m(*a))[1]
        )
    controller._dirty = False
    controller._on_report(cast(AgentLink, link), link.send(down, down))  # a heartbeat
    assert looks == [] and not controller._dirty

    # Silent too long: Ready Unknown; the next heartbeat brings the reported state back.
    controller.check_reporter(1e9)
    assert controller.health.conditions[READY].status == "Unknown"
    controller._on_report(cast(AgentLink, link), link.send(down, down))
    ready = controller.health.conditions[READY]
    assert (ready.status, ready.reason) == ("False", "Unreachable") and looks
    looks.clear()
    controller._on_report(cast(AgentLink, link), link.send(down, down))
    assert looks == []

    up = State(ready=Readiness(True))
    controller._on_report(cast(AgentLink, link), link.send(down, up))
    assert controller.health.conditions[READY].status == "True"
    await controller.stop()

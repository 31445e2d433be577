"""Fencing of the work that runs under a lease, on the SQLite store with a fake clock:
the ACE record sync (under its cluster's lease) and the group refresh (under its own)
write nothing once the lease is no longer certainly held, even in the middle of a pass;
the ACE sync's outcome is the cluster's ``ACESynced`` condition, set only by the holder,
kept by the controller's status writes and removed with direct access."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from gateway.clusters.replicas import REPLICAS, ReplicaSet
from gateway.clusters.tunnels import TUNNELS, AgentLink
from gateway.controllers.ace_sync import AceController, _failure
from gateway.controllers.cluster_controller import (
    LEASE_PREFIX,
    ClusterController,
    ClusterControllers,
)
from gateway.controllers.cluster_health import ACE_SYNCED, MAX_MESSAGE, SYNCED, ClusterHealth
from gateway.controllers.kubeapi import ApiError
from gateway.controllers.lease import Lease, LeaseLost
from gateway.identity.directory import DIRECTORY, Directory
from gateway.identity.providers.base import ExternalIdentity
from gateway.identity.providers.registry import PROVIDERS, Providers
from gateway.operations.background import GROUP_REFRESH_LEASE, refresh_external_users
from gateway.store.records import CLUSTER, CLUSTER_STATUS, USER, Cluster, User
from gateway.store.sqlite import SQLiteStore
from tunnel.registry import TunnelRegistry

TTL_S = 15.0
LAPSES_AFTER_S = TTL_S - TTL_S / 5  # Lease.held turns False here, before anyone may take it


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Process:
    app: web.Application
    directory: Directory
    store: SQLiteStore
    controllers: ClusterControllers
    clock: Clock

    async def lead(self, cluster_id: str = "c-1") -> Lease:
        """Take the cluster's lease and run its controller here (not started)."""
        lease = Lease(
            self.store,
            LEASE_PREFIX + cluster_id,
            self.controllers.replicas.id,
            ttl_s=TTL_S,
            clock=self.clock,
            monotonic=self.clock,
        )
        assert await lease.try_acquire()
        self.controllers.running[cluster_id] = ClusterController(
            self.controllers, cluster_id, lease
        )
        return lease


async def _process(path: Path, clock: Clock, replica: str) -> Process:
    store = await SQLiteStore(path).open()
    directory = Directory(store, clock=clock)
    await directory.load()
    app = web.Application()
    app[DIRECTORY] = directory
    tunnels: TunnelRegistry[AgentLink] = TunnelRegistry()
    app[TUNNELS] = tunnels
    app[REPLICAS] = ReplicaSet(directory, tunnels, replica_id=replica)
    controllers = ClusterControllers(app, cast(Any, None))
    return Process(app, directory, store, controllers, clock)


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[Process, Process]]:
    clock = Clock()
    first = await _process(tmp_path / "store.db", clock, "r-1")
    await first.directory.put(CLUSTER, Cluster("c-1", "one", clock.now, ace_enabled=True))
    second = await _process(tmp_path / "store.db", clock, "r-2")
    try:
        yield first, second
    finally:
        await first.store.close()
        await second.store.close()


def _ace(process: Process) -> AceController:
    return AceController(process.app, cast(Any, None), process.controllers)


@dataclass
class FakeCustom:
    """The ``KubeClient`` calls the ACE sync makes for its custom objects; each write
    takes ``write_s`` on the clock (a slow API server, a paused process)."""

    clock: Clock
    existing: list[dict[str, Any]] = field(default_factory=list)
    write_s: float = 0.0
    writes: list[tuple[str, str]] = field(default_factory=list)

    async def get(self, path: str) -> dict[str, Any]:
        return {"items": self.existing}

    async def create(self, path: str, body: dict[str, Any]) -> None:
        self._write("create", body["metadata"]["name"])

    async def replace(self, path: str, body: dict[str, Any]) -> None:
        assert path.endswith("/" + body["metadata"]["name"])
        self._write("replace", body["metadata"]["name"])

    async def delete(self, path: str) -> None:
        self._write("delete", path.rpartition("/")[2])

    def _write(self, action: str, name: str) -> None:
        self.writes.append((action, name))
        self.clock.now += self.write_s


def _records(count: int) -> dict[str, Any]:
    return {
        f"token-{i}": {"userName": "u-1", "hash": f"h{i}", "enabled": True} for i in range(count)
    }


async def test_the_ace_sync_writes_while_it_holds_the_clusters_lease(
    two: tuple[Process, Process],
) -> None:
    first, second = two
    await first.lead()
    custom = FakeCustom(first.clock, existing=[{"metadata": {"name": "token-stale"}}])
    await _ace(first)._apply(
        "c-1", custom, "clusterauthtokens", "ClusterAuthToken", _records(2), True
    )
    assert sorted(custom.writes) == [
        ("create", "token-0"),
        ("create", "token-1"),
        ("delete", "token-stale"),
    ]
    # The other process does not hold the lease: not a single write.
    other = FakeCustom(second.clock)
    with pytest.raises(LeaseLost):
        await _ace(second)._apply(
            "c-1", other, "clusterauthtokens", "ClusterAuthToken", _records(2), True
        )
    assert other.writes == []


async def test_a_holder_whose_lease_lapses_mid_pass_stops_before_the_next_write(
    two: tuple[Process, Process],
) -> None:
    first, _ = two
    await first.lead()
    # Each write takes 5 s: the lease (15 s, renewed by nobody here) is no longer
    # certainly held after 12 s, so the third write is never made.
    custom = FakeCustom(first.clock, write_s=5.0)
    with pytest.raises(LeaseLost):
        await _ace(first)._apply(
            "c-1", custom, "clusterauthtokens", "ClusterAuthToken", _records(5), True
        )
    assert len(custom.writes) == 3  # at 0, 5 and 10 s; at 15 s it had stopped
    assert first.clock.now - 1_000_000.0 == 15.0 > LAPSES_AFTER_S


async def test_records_in_step_need_no_write_and_no_lease(two: tuple[Process, Process]) -> None:
    _, second = two
    fields = _records(1)["token-0"]
    custom = FakeCustom(second.clock, existing=[{"metadata": {"name": "token-0"}, **fields}])
    await _ace(second)._apply(
        "c-1", custom, "clusterauthtokens", "ClusterAuthToken", _records(1), True
    )
    assert custom.writes == []


async def test_the_stored_endpoints_are_fenced_too(two: tuple[Process, Process]) -> None:
    first, second = two
    endpoints = (("cp-1", "https://10.0.0.1:6443"),)
    with pytest.raises(LeaseLost):
        await _ace(second).record_nodes("c-1", endpoints)
    second.directory.catch_up()
    assert second.directory.clusters["c-1"].ace_nodes == ()
    await first.lead()
    await _ace(first).record_nodes("c-1", endpoints)
    second.directory.catch_up()
    assert second.directory.clusters["c-1"].ace_nodes == endpoints
    first.clock.now += LAPSES_AFTER_S
    with pytest.raises(LeaseLost):
        await _ace(first).record_nodes("c-1", (("cp-2", "https://10.0.0.2:6443"),))
    second.directory.catch_up()
    assert second.directory.clusters["c-1"].ace_nodes == endpoints


def _condition(doc: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    assert doc is not None
    return next((c for c in doc["conditions"] if c["type"] == kind), None)


async def test_ace_synced_is_reported_by_the_holder_and_kept_by_its_status_writes(
    two: tuple[Process, Process],
) -> None:
    first, second = two
    await first.lead()
    controller = first.controllers.running["c-1"]
    assert await controller.write()
    assert _condition(await first.store.get(CLUSTER_STATUS, "c-1"), ACE_SYNCED) is None
    # Not the holder: nothing reported.
    await _ace(second)._report("c-1", False, "SyncFailed", "the cluster answered 403")
    assert _condition(await first.store.get(CLUSTER_STATUS, "c-1"), ACE_SYNCED) is None
    ace = _ace(first)
    await ace._report("c-1", False, "SyncFailed", "the cluster answered 403: forbidden")
    assert await controller.write()
    failed = _condition(await first.store.get(CLUSTER_STATUS, "c-1"), ACE_SYNCED)
    assert failed is not None and failed["status"] == "False"
    assert failed["reason"] == "SyncFailed" and "403" in failed["message"]
    # Synced stays the access sync's: untouched.
    synced = _condition(await first.store.get(CLUSTER_STATUS, "c-1"), SYNCED)
    assert synced is not None and synced["status"] == "Unknown"
    await ace._report("c-1", True, "Synced", "direct-access records are in step")
    assert await controller.write()
    ok = _condition(await first.store.get(CLUSTER_STATUS, "c-1"), ACE_SYNCED)
    assert ok is not None and ok["status"] == "True"
    # Direct access turned off: the condition goes.
    await ace._withdraw("c-1")
    assert await controller.write()
    assert _condition(await first.store.get(CLUSTER_STATUS, "c-1"), ACE_SYNCED) is None


async def test_ace_synced_set_elsewhere_is_kept_and_its_removal_too(
    two: tuple[Process, Process],
) -> None:
    first, second = two
    await first.lead()
    controller = first.controllers.running["c-1"]
    assert await controller.write()
    await second.controllers.set_condition("c-1", ACE_SYNCED, True, "Synced", "in step")
    controller.health.probe_ok(first.clock.now)
    assert await controller.write()
    kept = _condition(await first.store.get(CLUSTER_STATUS, "c-1"), ACE_SYNCED)
    assert kept is not None and kept["status"] == "True"
    await second.controllers.remove_condition("c-1", ACE_SYNCED)
    controller.health.probe_failed("HTTP500", "down", first.clock.now)
    assert await controller.write()
    assert _condition(await first.store.get(CLUSTER_STATUS, "c-1"), ACE_SYNCED) is None
    with pytest.raises(ValueError):
        await second.controllers.remove_condition("c-1", SYNCED)


def test_ace_synced_is_optional_in_the_state_machine() -> None:
    health = ClusterHealth("c-1")
    assert [c["type"] for c in health.condition_docs()] == ["Connected", "Ready", "Synced"]
    assert health.set_condition(ACE_SYNCED, False, "SyncFailed", "x", 1.0)
    assert [c["type"] for c in health.condition_docs()][-1] == ACE_SYNCED
    resumed = ClusterHealth.from_status("c-1", {"conditions": health.condition_docs()})
    assert resumed.conditions[ACE_SYNCED].reason == "SyncFailed"
    assert health.state == resumed.state == "pending"  # conditions other than Connected
    assert health.remove_condition(ACE_SYNCED)  # and Ready never change the state
    assert not health.remove_condition(ACE_SYNCED)


# -- the group refresh --------------------------------------------------------------------


@dataclass
class SlowDirectory:
    """An LDAP stand-in: every user is now in ``cn=new``; each answer takes ``answer_s``."""

    clock: Clock
    answer_s: float
    asked: list[str] = field(default_factory=list)

    async def authenticate(self, username: str, password: str) -> ExternalIdentity:
        raise AssertionError("the group refresh never authenticates")

    async def refresh(self, principal_id: str) -> ExternalIdentity | None:
        self.asked.append(principal_id)
        self.clock.now += self.answer_s
        return ExternalIdentity("openldap", principal_id, principal_id, groups=("cn=new",))

    async def close(self) -> None:
        return None


def _group_lease(process: Process) -> Lease:
    return Lease(
        process.store,
        GROUP_REFRESH_LEASE,
        process.controllers.replicas.id,
        ttl_s=TTL_S,
        clock=process.clock,
        monotonic=process.clock,
    )


async def test_the_group_refresh_runs_only_under_its_lease_and_stops_when_it_lapses(
    two: tuple[Process, Process],
) -> None:
    first, second = two
    for i in range(4):
        await first.directory.put(
            USER,
            User(
                f"u-{i}",
                f"user{i}",
                "",
                first.clock.now,
                provider="openldap",
                principal_ids=(f"openldap_user://uid=user{i}",),
                group_principals=("cn=old",),
            ),
        )
    second.directory.catch_up()
    slow = SlowDirectory(first.clock, answer_s=5.0)
    for process in (first, second):
        process.app[PROVIDERS] = Providers(password={"openldap": slow})
    held, other = _group_lease(first), _group_lease(second)
    assert await held.try_acquire()
    assert not await other.try_acquire()  # one holder at a time
    # Not the holder: it neither asks the directory nor writes.
    assert await refresh_external_users(second.app, other) == 0
    assert slow.asked == []
    # The holder: each answer takes 5 s, so after the third (15 s) the lease is no longer
    # certainly held and that user's change is not written, nor any later one.
    await refresh_external_users(first.app, held)
    assert len(slow.asked) == 3
    second.directory.catch_up()
    groups = {u.id: u.group_principals for u in second.directory.users.values()}
    assert groups == {
        "u-0": ("cn=new",),
        "u-1": ("cn=new",),
        "u-2": ("cn=old",),
        "u-3": ("cn=old",),
    }
    # The lease has expired: the other process takes it over and finishes the work.
    second.clock.now += TTL_S
    assert await other.try_acquire() and other.generation == 2
    slow.answer_s = 0.0
    assert await refresh_external_users(second.app, other) == 4
    first.directory.catch_up()
    assert {u.group_principals for u in first.directory.users.values()} == {("cn=new",)}


# -- what the condition says of a failure (the cluster's answer: any bytes) ---------------


def test_the_failure_message_is_the_clusters_status_message() -> None:
    body = json.dumps({"kind": "Status", "code": 403, "message": "clusterauthtokens is forbidden"})
    assert _failure(ApiError(403, "Forbidden", body)) == (
        "the cluster answered 403: clusterauthtokens is forbidden"
    )
    assert (
        _failure(ApiError(502, "Bad Gateway", "bad gateway\n"))
        == "the cluster answered 502: bad gateway"
    )
    assert _failure(OSError("refused")) == "OSError: refused"


@given(
    status=st.integers(min_value=-1, max_value=1000),
    body=st.one_of(
        st.text(max_size=3000),
        st.binary(max_size=100).map(lambda raw: raw.decode("utf-8", "replace")),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.sampled_from(["message", "kind", "x"]), inner, max_size=3)
            ),
            max_leaves=20,
        ).map(json.dumps),
        st.integers(min_value=1, max_value=5000).map(lambda depth: "[" * depth),
    ),
)
def test_any_answer_gives_a_bounded_message_and_never_raises(status: int, body: str) -> None:
    message = _failure(ApiError(status, "", body))
    assert isinstance(message, str) and len(message) <= MAX_MESSAGE


async def test_a_stopping_process_gives_every_lease_up_in_one_write(
    two: tuple[Process, Process],
) -> None:
    """``ClusterControllers.stop`` with many clusters led: the last statuses (no other
    replica reaches these clusters), then one write for all the leases (the session
    record deleted); not a write per lease. The other process takes them all at once."""
    first, second = two
    ids = [f"c-{i}" for i in range(1, 31)]
    for cluster_id in ids[1:]:
        await first.directory.put(CLUSTER, Cluster(cluster_id, cluster_id, first.clock.now))
    for cluster_id in ids:
        await first.lead(cluster_id)
    calls: list[tuple[str, list[str]]] = []
    swap, swap_many = first.store.swap, first.store.swap_many

    async def one(kind: str, key: str, expected: Any, value: Any) -> int | None:
        calls.append((kind, [key]))
        return await swap(kind, key, expected, value)

    async def many(kind: str, items: Any) -> list[int | None]:
        calls.append((kind, [key for key, _, _ in items]))
        return await swap_many(kind, items)

    async def now(kind: str, key: str, expected: Any, value: Any) -> int | None:
        calls.append((kind, [key]))
        return await swap_now(kind, key, expected, value)

    swap_now = first.store.swap_now
    first.store.swap = one  # type: ignore[method-assign]
    first.store.swap_many = many  # type: ignore[method-assign]
    first.store.swap_now = now  # type: ignore[method-assign]
    revision = await first.store.revision()
    controllers = list(first.controllers.running.values())
    tasks_before = asyncio.all_tasks()
    await first.controllers.stop()
    # Nothing runs on for a stopped controller: its last status looked at its agents
    # without choosing a reporter or starting to probe (each a task or three per cluster).
    assert not any(controller.probing for controller in controllers)
    assert asyncio.all_tasks() <= tasks_before
    # One batch of statuses (one transaction), one write for every lease.
    assert [(kind, sorted(keys)) for kind, keys in calls] == [
        (CLUSTER_STATUS, sorted(ids)),
        ("leases", ["session/r-1"]),
    ]
    assert await first.store.revision() == revision + len(ids) + 1
    status = await second.store.get(CLUSTER_STATUS, "c-1")
    assert status is not None and status["generation"] == 1
    for cluster_id in ids:  # no waiting for an expiry
        assert (await second.lead(cluster_id)).generation == 2


async def test_a_gone_session_wakes_the_other_processes_contenders(
    two: tuple[Process, Process],
) -> None:
    """A session record changed on the feed: renewed, nobody is woken; gone (its process
    gave everything up), every keeper not holding tries at once."""
    from gateway.controllers.lease import release_all
    from gateway.store.records import LEASE

    first, second = two
    await first.lead()

    class Keeper:
        holding = False
        woken = 0

        def wake(self) -> None:
            self.woken += 1

    keeper = Keeper()
    second.controllers.keepers["c-1"] = (keeper, cast(Any, None))  # type: ignore[assignment]

    async def changed(key: str) -> None:
        second.controllers._on_directory_change(LEASE, key)
        await asyncio.gather(*second.controllers._background)

    await changed("session/r-1")  # a renewal, say
    assert keeper.woken == 0
    await release_all(first.store, "r-1")
    await changed("session/r-1")
    assert keeper.woken == 1
    await changed("session/r-2")  # its own session: never looked at
    assert keeper.woken == 1
    second.controllers.keepers.clear()

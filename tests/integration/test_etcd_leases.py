"""Leadership leases on etcd are etcd's own leases (issue 19), against a real etcd.

``gateway.controllers.lease.EtcdLease``: the record is written under an etcd lease (one
per holder, shared by all its records), renewed with etcd's keep-alive and deleted by etcd
when the holder stops renewing; its generation is the revision of the write that took it.
Each test checks what etcd itself holds (the key's lease, the lease's keys), not only what
the lease object says.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.controllers.lease import EtcdLease, Lease, LeaseKeeper, lease_for
from gateway.store.base import StoreError
from gateway.store.etcd import EtcdOptions, EtcdStore
from gateway.store.records import LEASE
from tests.fixtures.etcd import Etcd, etcd  # noqa: F401 - the fixture
from tests.fixtures.faultproxy import FaultProxy

pytestmark = pytest.mark.integration

TTL = 3.0
"""Seconds; etcd grants at least its own minimum (1.5 s election-based, rounded up)."""


class CountingStore(EtcdStore):
    """Counts the requests by path, to see how many keep-alives leases cost."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: dict[str, int] = {}

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls[path] = self.calls.get(path, 0) + 1
        return await super()._call(path, body)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


@pytest.fixture
async def stores(etcd: Etcd) -> AsyncIterator[tuple[CountingStore, CountingStore]]:  # noqa: F811
    """Two clients on one etcd under a fresh prefix, as two replicas have."""
    prefix = f"/leases-{uuid.uuid4().hex[:8]}/"
    a = await CountingStore(EtcdOptions((etcd.url,), prefix, request_timeout_s=2.0)).open()
    b = await CountingStore(EtcdOptions((etcd.url,), prefix, request_timeout_s=2.0)).open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def _lease(store: EtcdStore, holder: str, name: str = "cluster/c-1", **kw: Any) -> Lease:
    return lease_for(store, name, holder, **{"ttl_s": TTL, "host": "h", **kw})


async def _raw(store: EtcdStore, name: str) -> dict[str, Any] | None:
    """The lease record's key as etcd holds it (with its ``lease``)."""
    import base64

    key = base64.b64encode(store._key(LEASE, name).encode()).decode()
    data = await store._call("kv/range", {"key": key})
    kvs = data.get("kvs") or []
    return kvs[0] if kvs else None


async def test_the_record_is_held_by_an_etcd_lease_that_etcd_expires(
    stores: tuple[CountingStore, CountingStore],
) -> None:
    a, b = stores
    first = _lease(a, "replica-a")
    assert isinstance(first, EtcdLease)
    assert await first.try_acquire() and first.held()
    kv = await _raw(a, "cluster/c-1")
    assert kv is not None and int(kv["lease"]) == first.lease_id != 0
    alive = await a._call("lease/timetolive", {"ID": str(first.lease_id), "keys": True})
    assert 0 < int(alive["TTL"]) <= TTL
    assert any(k for k in alive.get("keys", []))
    assert first.generation == int(kv["mod_revision"])

    # Nobody renews: etcd itself deletes the record when the lease runs out, and the
    # holder had stopped acting before that.
    second = _lease(b, "replica-b")
    assert not await second.try_acquire()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TTL + 5
    while await _raw(b, "cluster/c-1") is not None:
        assert loop.time() < deadline, "etcd never expired the record"
        await asyncio.sleep(0.1)
    gone_at = loop.time()
    assert not first.held() and first.valid_until <= gone_at
    assert await second.try_acquire()
    assert second.generation > first.generation


async def test_racing_holders_only_one_wins(stores: tuple[CountingStore, CountingStore]) -> None:
    a, b = stores
    for round_ in range(5):
        name = f"race/{round_}"
        one, two = _lease(a, "replica-a", name), _lease(b, "replica-b", name)
        won = await asyncio.gather(one.try_acquire(), two.try_acquire())
        assert sorted(won) == [False, True]
        kv = await _raw(a, name)
        holder = one if won[0] else two
        assert kv is not None and int(kv["lease"]) == holder.lease_id  # type: ignore[attr-defined]


async def test_release_deletes_the_record_and_the_next_generation_is_higher(
    stores: tuple[CountingStore, CountingStore],
) -> None:
    a, b = stores
    generations = []
    for turn in range(4):
        store, holder = (a, "replica-a") if turn % 2 == 0 else (b, "replica-b")
        lease = _lease(store, holder)
        assert await lease.try_acquire()
        generations.append(lease.generation)
        await lease.release()
        assert not lease.held()
        assert await _raw(a, "cluster/c-1") is None
    assert generations == sorted(generations) and len(set(generations)) == 4


async def test_a_waiting_holder_sleeps_long_until_the_record_is_gone(
    stores: tuple[CountingStore, CountingStore],
) -> None:
    """Another holder's record stops an attempt: a watched keeper may sleep long (etcd
    deletes the record when that holder's lease ends, and the change feed wakes the keeper);
    once the record is gone the next attempt takes it and the usual delay is back."""
    a, b = stores
    one, two = _lease(a, "replica-a"), _lease(b, "replica-b")
    assert await one.try_acquire()
    assert not await two.try_acquire()
    assert two.waiting_delay(1.0, wanted=True) >= 3 * two.ttl_s
    await one.release()
    assert await two.try_acquire()
    assert two.waiting_delay(1.0, wanted=True) == 1.0


async def test_one_keep_alive_serves_every_lease_of_a_holder(
    stores: tuple[CountingStore, CountingStore],
) -> None:
    a, _ = stores
    leases = [_lease(a, "replica-a", f"cluster/c-{i}") for i in range(40)]
    assert all(await asyncio.gather(*(lease.try_acquire() for lease in leases)))
    assert a.calls.get("lease/grant") == 1
    ids = {lease.lease_id for lease in leases}  # type: ignore[attr-defined]
    assert len(ids) == 1
    for _ in range(3):
        await asyncio.sleep(TTL / 3 + 0.05)
        assert all(await asyncio.gather(*(lease.try_acquire() for lease in leases)))
    # Three renewal rounds of 40 leases: three keep-alives, not 120.
    assert a.calls.get("lease/keepalive") == 3
    assert all(lease.held() for lease in leases)


async def test_running_keepers_sleep_while_the_sessions_timer_keeps_their_leases(
    stores: tuple[CountingStore, CountingStore],
) -> None:
    """40 keepers holding their leases: over three renewal periods the session's one
    timer sends the keep-alives, and no keeper wakes to read or write its record; the
    leases stay held."""
    a, _ = stores
    keepers = [
        LeaseKeeper(_lease(a, "replica-a", f"cluster/k-{i}"), lambda: True, lambda _: None)
        for i in range(40)
    ]
    steps = 0
    step = LeaseKeeper.step

    async def counted(self: LeaseKeeper) -> float:
        nonlocal steps
        steps += 1
        return await step(self)

    LeaseKeeper.step = counted  # type: ignore[method-assign]
    tasks = [asyncio.create_task(k.run()) for k in keepers]
    try:
        while not all(k.holding for k in keepers):
            await asyncio.sleep(0.05)
        steps, before = 0, dict(a.calls)
        await asyncio.sleep(TTL + 0.3)  # three renewal periods
        assert steps == 0
        assert a.calls.get("lease/keepalive", 0) - before.get("lease/keepalive", 0) in (2, 3, 4)
        assert a.calls.get("kv/range", 0) == before.get("kv/range", 0)  # no record read
        assert all(k.holding and k.lease.held() for k in keepers)
    finally:
        LeaseKeeper.step = step  # type: ignore[method-assign]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_holder_whose_etcd_lease_expired_takes_the_record_again(
    stores: tuple[CountingStore, CountingStore],
) -> None:
    a, _ = stores
    lease = _lease(a, "replica-a")
    assert await lease.try_acquire()
    before = lease.generation
    await a.revoke_lease(lease.lease_id)  # type: ignore[attr-defined]
    assert await _raw(a, "cluster/c-1") is None  # etcd deleted it with the lease
    await asyncio.sleep(TTL / 3 + 0.05)  # the next renewal finds the lease gone
    assert await lease.try_acquire()
    assert lease.generation > before
    kv = await _raw(a, "cluster/c-1")
    assert kv is not None and int(kv["lease"]) == lease.lease_id  # type: ignore[attr-defined]


async def test_a_crashed_holder_on_this_host_is_taken_over_at_once(
    stores: tuple[CountingStore, CountingStore],
) -> None:
    a, b = stores
    gone = subprocess.Popen(["true"])
    gone.wait()
    crashed = _lease(a, "worker-1", pid=gone.pid)
    assert await crashed.try_acquire()
    other_host = _lease(b, "worker-2", host="elsewhere")
    assert not await other_host.try_acquire()
    same_host = _lease(b, "worker-2", pid=os.getpid())
    assert await same_host.try_acquire()
    assert same_host.generation > crashed.generation


async def test_a_holder_cut_off_from_etcd_stops_before_another_takes_over(
    etcd: Etcd,  # noqa: F811
) -> None:
    """Replica A reaches etcd through a fault proxy that starts dropping everything
    (no RST): its keeper cannot renew. A must stop acting (``held`` False, keeper
    reports the loss) before etcd lets B take the lease."""
    prefix = f"/leases-{uuid.uuid4().hex[:8]}/"
    proxy = FaultProxy(_port(etcd.url)).start()
    a = await EtcdStore(
        EtcdOptions((f"http://127.0.0.1:{proxy.port}",), prefix, request_timeout_s=1.0)
    ).open()
    b = await EtcdStore(EtcdOptions((etcd.url,), prefix, request_timeout_s=1.0)).open()
    loop = asyncio.get_running_loop()
    events: list[tuple[str, bool, float]] = []
    try:
        lease_a, lease_b = _lease(a, "replica-a"), _lease(b, "replica-b")
        keeper_a = LeaseKeeper(
            lease_a, lambda: True, lambda h: events.append(("a", h, loop.time()))
        )
        keeper_b = LeaseKeeper(
            lease_b, lambda: True, lambda h: events.append(("b", h, loop.time()))
        )
        task_a = asyncio.create_task(keeper_a.run())
        while not keeper_a.holding:
            await asyncio.sleep(0.05)
        task_b = asyncio.create_task(keeper_b.run())
        await asyncio.sleep(TTL / 2)
        assert keeper_a.holding and not keeper_b.holding
        proxy.blackhole()
        cut_at = loop.time()
        deadline = cut_at + 3 * TTL + 5
        while not keeper_b.holding:
            assert loop.time() < deadline, f"B never took over: {events}"
            await asyncio.sleep(0.05)
        a_lost = [t for who, h, t in events if who == "a" and not h]
        b_took = [t for who, h, t in events if who == "b" and h]
        assert a_lost and b_took and a_lost[0] < b_took[0], events
        assert lease_b.generation > lease_a.generation
        for task in (task_a, task_b):
            task.cancel()
        await asyncio.gather(task_a, task_b, return_exceptions=True)
    finally:
        proxy.stop()
        await a.close()
        await b.close()


async def test_lease_calls_against_etcd(etcd: Etcd) -> None:  # noqa: F811
    store = await EtcdStore(EtcdOptions((etcd.url,), f"/l-{uuid.uuid4().hex[:6]}/")).open()
    try:
        lease_id, granted = await store.grant_lease(3)
        assert granted >= 3
        assert await store.keep_lease(lease_id) >= 2
        assert await store.put_leased(LEASE, "x", {"v": 1}, lease_id, 0) is not None
        # Written only while the document is still the revision read.
        assert await store.put_leased(LEASE, "x", {"v": 2}, lease_id, 0) is None
        held = await store.get_versioned(LEASE, "x")
        assert held is not None and held[0] == {"v": 1}
        assert await store.put_leased(LEASE, "x", {"v": 2}, lease_id, held[1]) is not None
        await store.revoke_lease(lease_id)
        assert await store.get_versioned(LEASE, "x") is None  # deleted with its lease
        await store.revoke_lease(lease_id)  # already gone: nothing
        assert await store.keep_lease(lease_id) == 0
        with pytest.raises(StoreError, match="lease not found"):
            await store.put_leased(LEASE, "x", {"v": 3}, lease_id, 0)
    finally:
        await store.close()

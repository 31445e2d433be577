"""The lease on the SQLite store: two holders racing, expiry, release, fencing, keeping.

Time is given (a wall clock and a monotonic clock the test moves), so nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.controllers.lease import Lease, LeaseKeeper
from gateway.store.base import StoreError
from gateway.store.records import LEASE
from gateway.store.sqlite import SQLiteStore

TTL = 15.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, SQLiteStore]]:
    """Two connections to one file, as two gateway workers have."""
    a = await SQLiteStore(tmp_path / "store.db").open()
    b = await SQLiteStore(tmp_path / "store.db").open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def _lease(store: SQLiteStore, holder: str, clock: Clock, **kw: object) -> Lease:
    return Lease(
        store, "cluster/c-1", holder, ttl_s=TTL, clock=clock, monotonic=clock, host="h", **kw
    )  # type: ignore[arg-type]


async def test_swap_is_compare_and_set(stores: tuple[SQLiteStore, SQLiteStore]) -> None:
    a, b = stores
    assert await a.swap(LEASE, "x", None, {"v": 1}) is not None
    assert await b.swap(LEASE, "x", None, {"v": 2}) is None  # not absent any more
    assert await b.swap(LEASE, "x", {"v": 9}, {"v": 2}) is None
    assert await b.swap(LEASE, "x", {"v": 1}, {"v": 2}) is not None
    assert await a.get(LEASE, "x") == {"v": 2}
    assert await a.swap(LEASE, "x", {"v": 1}, None) is None  # a stale delete fails
    assert await a.swap(LEASE, "x", {"v": 2}, None) is not None
    assert await a.get(LEASE, "x") is None
    assert await a.swap(LEASE, "x", None, None) == 0


async def test_two_holders_racing_only_one_wins(stores: tuple[SQLiteStore, SQLiteStore]) -> None:
    clock = Clock()
    for _ in range(10):
        one = _lease(stores[0], "r-1", clock)
        two = _lease(stores[1], "r-2", clock)
        won = await asyncio.gather(one.try_acquire(), two.try_acquire())
        assert sorted(won) == [False, True]
        assert one.held() != two.held()
        winner = one if one.held() else two
        await winner.release()
        released = await stores[0].get(LEASE, "cluster/c-1")
        assert released is not None and released["holder"] == ""


async def test_the_holder_renews_and_others_wait_for_expiry(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    clock = Clock()
    one = _lease(stores[0], "r-1", clock)
    two = _lease(stores[1], "r-2", clock)
    assert await one.try_acquire() and one.generation == 1
    clock.now += TTL / 3
    assert await one.try_acquire()  # renewed, same generation
    assert one.generation == 1
    assert not await two.try_acquire()
    clock.now += TTL - 0.1  # just before the renewed lease expires
    assert not await two.try_acquire()
    assert not one.held()  # the holder stopped acting before the lease's end
    clock.now += 0.2
    assert await two.try_acquire() and two.generation == 2  # expired: taken over


async def test_a_holder_that_cannot_renew_stops_before_expiry(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    clock = Clock()
    one = _lease(stores[0], "r-1", clock)
    assert await one.try_acquire()
    start = clock.now
    assert one.valid_until == start + TTL - TTL / 5
    clock.now = one.valid_until - 0.01
    assert one.held()
    clock.now = one.valid_until
    assert not one.held()
    assert clock.now < start + TTL  # nobody else could have taken it yet


async def test_fencing_an_old_holder_cannot_renew_after_a_takeover(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    clock = Clock()
    one = _lease(stores[0], "r-1", clock)
    two = _lease(stores[1], "r-2", clock)
    assert await one.try_acquire()
    clock.now += TTL + 1  # one was paused past its lease
    assert await two.try_acquire() and two.generation == one.generation + 1
    assert not await one.try_acquire()  # its renewal finds another holder
    assert not one.held()
    await one.release()  # releasing what it no longer holds deletes nothing
    record = await stores[0].get(LEASE, "cluster/c-1")
    assert record is not None and record["holder"] == "r-2"


async def test_a_crashed_holder_on_this_host_is_taken_over_at_once(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    clock = Clock()
    one = _lease(stores[0], "r-1", clock, pid=4242)
    assert await one.try_acquire()
    alive = _lease(stores[1], "r-2", clock, is_running=lambda pid: True)
    assert not await alive.try_acquire()
    dead = _lease(stores[1], "r-2", clock, is_running=lambda pid: pid != 4242)
    assert await dead.try_acquire()


async def test_the_keeper_holds_while_wanted_and_gives_up_when_not(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    clock = Clock()
    want = [True]
    changes: list[bool] = []
    keeper = LeaseKeeper(_lease(stores[0], "r-1", clock), lambda: want[0], changes.append)
    delay = await keeper.step()
    assert changes == [True] and delay == pytest.approx(TTL / 3)
    clock.now += delay
    await keeper.step()
    assert changes == [True]  # renewed: no change
    want[0] = False
    await keeper.step()
    assert changes == [True, False]
    released = await stores[0].get(LEASE, "cluster/c-1")  # released for the others
    assert released is not None and released["holder"] == "" and released["expires"] == 0


class FailingStore:
    """A store that answers once, then fails (the holder cannot renew)."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.fail = False

    async def get(self, kind: str, key: str) -> object:
        if self.fail:
            raise StoreError("unreachable")
        return await self.inner.get(kind, key)

    async def swap(self, kind: str, key: str, expected: object, value: object) -> object:
        if self.fail:
            raise StoreError("unreachable")
        return await self.inner.swap(kind, key, expected, value)  # type: ignore[arg-type]


def _kept(store: FailingStore, clock: Clock, changes: list[bool]) -> tuple[Lease, LeaseKeeper]:
    """A lease on ``store`` and a keeper that always wants it, reporting into ``changes``."""
    lease = Lease(
        store,  # type: ignore[arg-type]
        "cluster/c-1",
        "r-1",
        ttl_s=TTL,
        clock=clock,
        monotonic=clock,
    )
    return lease, LeaseKeeper(lease, lambda: True, changes.append)


async def test_the_keeper_lets_go_when_the_store_stays_down(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    clock = Clock()
    store = FailingStore(stores[0])
    changes: list[bool] = []
    _, keeper = _kept(store, clock, changes)
    await keeper.step()
    assert changes == [True]
    store.fail = True
    for _ in range(100):  # bounded: about one attempt a second until the lease lapses
        clock.now += await keeper.step() or 0.5
        if changes[-1] is False:
            break
    assert changes == [True, False]
    assert clock.now < 1_000_000.0 + TTL + 1.0


class HangingStore(FailingStore):
    """A store that answers once, then never again (a black-holed path, no error)."""

    async def get(self, kind: str, key: str) -> object:
        if self.fail:
            await asyncio.Event().wait()
        return await self.inner.get(kind, key)

    async def swap(self, kind: str, key: str, expected: object, value: object) -> object:
        if self.fail:
            await asyncio.Event().wait()
        return await self.inner.swap(kind, key, expected, value)  # type: ignore[arg-type]


async def test_a_lapsed_lease_is_reported_before_an_attempt_that_hangs(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    """The keeper woke just after the lease lapsed (it could not renew): it says so at
    once, not after an attempt to take it again that waits on an unreachable store (a
    fresh-clone run saw another replica take the lease before the report)."""
    clock = Clock()
    store = HangingStore(stores[0])
    changes: list[bool] = []
    lease, keeper = _kept(store, clock, changes)
    await keeper.step()
    assert changes == [True]
    store.fail = True
    clock.now = lease.valid_until + 0.01  # woke just past the end
    attempt = asyncio.create_task(keeper.step())
    await asyncio.sleep(0.05)
    assert changes == [True, False]  # reported while the attempt still waits
    attempt.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await attempt


async def test_generations_keep_growing_across_releases(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    """A takes, releases; B takes, releases; A takes again: each a higher generation (a
    released lease keeps its generation), so records written under an earlier holder
    never look newer than the current one's (the fresh-clone CI run of 2026-12-06 hit it:
    the third holder started at generation 1 and its status writes were refused)."""
    clock = Clock()
    a, b = _lease(stores[0], "r-1", clock), _lease(stores[1], "r-2", clock)
    seen: list[int] = []
    for lease in (a, b, a):
        assert await lease.try_acquire()
        seen.append(lease.generation)
        await lease.release()
    assert seen == [1, 2, 3]


async def test_the_keepers_wakeup_is_an_event_with_a_timeout() -> None:
    """``_Wakeup``: set before the wait returns at once; a set during the wait ends it; an
    unset wait ends at its time, False; a cancelled wait leaves nothing behind."""
    from gateway.controllers.lease import _Wakeup

    wakeup = _Wakeup()
    wakeup.set()
    assert await wakeup.wait_at_most(10.0)
    wakeup.clear()
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert not await wakeup.wait_at_most(0.05)
    assert 0.04 <= loop.time() - start < 5.0
    waiting = asyncio.ensure_future(wakeup.wait_at_most(10.0))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await wakeup.wait_at_most(1.0)  # one waiter only
    wakeup.set()
    assert await asyncio.wait_for(waiting, 1.0)
    wakeup.clear()
    waiting = asyncio.ensure_future(wakeup.wait_at_most(10.0))
    await asyncio.sleep(0)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert not await wakeup.wait_at_most(0.01)  # the cancelled waiter is gone

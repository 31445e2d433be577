"""Leases under one session record per process (SQLite): renewing every lease a process
holds is one write, a taker ends an expired session before taking, ``release_all`` gives
everything up in one write, records from before sessions are still understood, and
racing holders never both hold while generations only grow.

Time is given (one clock the test moves, as wall and monotonic time), so nothing sleeps.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.controllers import lease as lease_module
from gateway.controllers.lease import (
    HELD_BY_SESSION,
    SESSION_PREFIX,
    Lease,
    LeaseKeeper,
    loop_lag,
    release_all,
)
from gateway.store.records import LEASE
from gateway.store.sqlite import SQLiteStore

TTL = 15.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class CountingStore:
    """A store that counts the writes (``swap``) and reads (``get``) passed to it."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.swaps: list[str] = []
        self.gets = 0

    async def get(self, kind: str, key: str) -> Any:
        self.gets += 1
        return await self.inner.get(kind, key)

    async def swap(self, kind: str, key: str, expected: Any, value: Any) -> Any:
        self.swaps.append(key)
        return await self.inner.swap(kind, key, expected, value)


class Hanging(CountingStore):
    """A counting store whose writes hang once ``hang`` is set (the store unreachable)."""

    hang = False

    async def swap(self, kind: str, key: str, expected: Any, value: Any) -> Any:
        if self.hang:
            await asyncio.Event().wait()
        return await super().swap(kind, key, expected, value)


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


def _lease(store: Any, name: str, holder: str, clock: Clock, **kw: Any) -> Lease:
    return Lease(store, name, holder, ttl_s=TTL, clock=clock, monotonic=clock, host="h", **kw)


async def test_n_leases_kept_over_k_periods_cost_k_writes(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    """40 leases kept by their keepers for three renewal periods: three writes, all of
    the session record (the record scheme wrote each lease every period: 120)."""
    clock = Clock()
    store = CountingStore(stores[0])
    keepers = [
        LeaseKeeper(_lease(store, f"cluster/c-{i}", "r-1", clock), lambda: True, lambda _: None)
        for i in range(40)
    ]
    for keeper in keepers:
        await keeper.step()
    assert all(keeper.holding for keeper in keepers)
    store.swaps.clear()
    reads = store.gets
    for _ in range(3):
        clock.now += TTL / 3
        for keeper in keepers:
            await keeper.step()
    assert all(keeper.holding and keeper.lease.held() for keeper in keepers)
    assert store.swaps == [SESSION_PREFIX + "r-1"] * 3
    assert store.gets == reads  # and no reads either
    assert all(keeper.lease.generation == 1 for keeper in keepers)


async def test_a_lease_record_names_the_session_not_an_expiry(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    clock = Clock()
    one = _lease(stores[0], "cluster/c-1", "r-1", clock, pid=4242)
    assert await one.try_acquire()
    record = await stores[1].get(LEASE, "cluster/c-1")
    session = await stores[1].get(LEASE, SESSION_PREFIX + "r-1")
    assert record is not None and session is not None
    assert record["session"] == session["session"] and record["generation"] == 1
    assert record["expires"] == HELD_BY_SESSION  # what a herdgate before sessions read
    assert session["expires"] == clock.now + TTL and session["pid"] == 4242


async def test_a_taker_ends_an_expired_session_and_its_holder_cannot_revive_it(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    clock = Clock()
    one_a = _lease(stores[0], "cluster/a", "r-1", clock)
    one_b = _lease(stores[0], "cluster/b", "r-1", clock)
    two = _lease(stores[1], "cluster/a", "r-2", clock)
    assert await one_a.try_acquire() and await one_b.try_acquire()
    clock.now += TTL - 0.01
    assert not await two.try_acquire()  # not expired yet
    clock.now += 0.02  # r-1 was paused past its session's end
    assert not one_a.held() and not one_b.held()
    assert await two.try_acquire() and two.generation == 2
    assert await stores[1].get(LEASE, SESSION_PREFIX + "r-1") is None  # ended by the taker
    # r-1 wakes up: its renewal finds its session gone, so both its leases are lost,
    # the one taken over and the one nobody took yet (that one it takes again).
    assert not await one_a.try_acquire()
    assert not one_a.held()
    assert await one_b.try_acquire() and one_b.generation == 2
    record = await stores[0].get(LEASE, "cluster/a")
    assert record is not None and record["holder"] == "r-2"


async def test_a_renewal_first_makes_the_takers_ending_fail(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    """The taker read the session expired; its holder renewed before the taker's
    deletion: the deletion (a compare-and-set) fails and nothing is taken."""
    clock = Clock()
    one = _lease(stores[0], "cluster/c-1", "r-1", clock)
    assert await one.try_acquire()
    clock.now += TTL + 1
    stale = await stores[1].get(LEASE, SESSION_PREFIX + "r-1")
    assert await one.try_acquire() and one.held()  # renewed just in time
    assert await stores[1].swap(LEASE, SESSION_PREFIX + "r-1", stale, None) is None
    two = _lease(stores[1], "cluster/c-1", "r-2", clock)
    assert not await two.try_acquire()


async def test_a_crashed_holders_session_is_ended_and_its_leases_taken_at_once(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    clock = Clock()
    names = [f"cluster/c-{i}" for i in range(5)]
    for name in names:
        assert await _lease(stores[0], name, "r-1", clock, pid=4242).try_acquire()
    for name in names:
        alive = _lease(stores[1], name, "r-2", clock, is_running=lambda pid: True)
        assert not await alive.try_acquire()
    takers = [
        _lease(stores[1], name, "r-2", clock, is_running=lambda pid: pid != 4242) for name in names
    ]
    assert all([await taker.try_acquire() for taker in takers])
    assert [taker.generation for taker in takers] == [2] * 5


async def test_release_all_frees_every_lease_in_one_write(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    clock = Clock()
    store = CountingStore(stores[0])
    names = [f"cluster/c-{i}" for i in range(30)]
    held = [_lease(store, name, "r-1", clock) for name in names]
    assert all([await lease.try_acquire() for lease in held])
    store.swaps.clear()
    await release_all(store, "r-1")  # type: ignore[arg-type]
    assert store.swaps == [SESSION_PREFIX + "r-1"]
    assert not any(lease.held() for lease in held)
    assert not await held[0].try_acquire()  # closed: nothing taken again
    takers = [_lease(stores[1], name, "r-2", clock) for name in names]
    assert all([await taker.try_acquire() for taker in takers])  # at once, no waiting
    assert {taker.generation for taker in takers} == {2}
    # A new lease of the same holder (a new session) competes as anyone else.
    again = _lease(store, names[0], "r-1", clock)
    assert not await again.try_acquire()


async def test_a_record_from_before_sessions_is_judged_by_its_own_expiry(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    clock = Clock()
    old = {
        "id": "cluster/c-1",
        "holder": "old-1",
        "host": "h",
        "pid": 1,
        "acquired": clock.now,
        "renewed": clock.now,
        "expires": clock.now + TTL,
        "generation": 4,
    }
    assert await stores[0].swap(LEASE, "cluster/c-1", None, old) is not None
    new = _lease(stores[1], "cluster/c-1", "r-2", clock, is_running=lambda pid: True)
    assert not await new.try_acquire()
    clock.now += TTL
    assert await new.try_acquire() and new.generation == 5


# -- racing holders, with hypothesis --------------------------------------------------

HOLDERS = ("r-1", "r-2", "r-3")
NAME = "cluster/c-1"

op = st.one_of(
    st.tuples(st.just("take"), st.sampled_from(range(3))),
    st.tuples(st.just("race"), st.sampled_from(range(3)), st.sampled_from(range(3))),
    st.tuples(st.just("release"), st.sampled_from(range(3))),
    st.tuples(st.just("release_all"), st.sampled_from(range(3))),
    st.tuples(st.just("wait"), st.sampled_from((0.5, TTL / 3, TTL - TTL / 5, TTL + 0.5))),
)


async def _race(ops: list[tuple[Any, ...]]) -> None:
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        conns = [await SQLiteStore(Path(tmp) / "store.db").open() for _ in HOLDERS]
        try:
            leases = [_lease(conns[i], NAME, h, clock) for i, h in enumerate(HOLDERS)]
            highest = 0
            last = -1
            for step in ops:
                before = [lease.generation if lease.held() else None for lease in leases]
                if step[0] == "take":
                    await leases[step[1]].try_acquire()
                elif step[0] == "race":
                    await asyncio.gather(*(leases[i].try_acquire() for i in set(step[1:])))
                elif step[0] == "release":
                    await leases[step[1]].release()
                elif step[0] == "release_all":
                    i = step[1]
                    await release_all(conns[i], HOLDERS[i])
                    assert not leases[i].held()
                    leases[i] = _lease(conns[i], NAME, HOLDERS[i], clock)
                else:
                    clock.now += step[1]
                holding = [i for i, lease in enumerate(leases) if lease.held()]
                assert len(holding) <= 1, f"both hold: {holding}"
                record = await conns[0].get(LEASE, NAME)
                for i in holding:
                    lease = leases[i]
                    assert record is not None and record["holder"] == HOLDERS[i]
                    assert record["generation"] == lease.generation
                    if before[i] is None and last == i:
                        # Held again by the last holder (its session lapsed, nobody took
                        # the lease, then renewed): never below what it had.
                        assert lease.generation >= highest
                    elif before[i] is None:  # taken: above every earlier holder's
                        assert lease.generation > highest
                    else:  # kept: its generation never moves
                        assert lease.generation == before[i]
                    highest = max(highest, lease.generation)
                    last = i
                if record is not None:
                    assert record["generation"] >= highest
        finally:
            for conn in conns:
                await conn.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=25))
def test_racing_holders_never_both_hold_and_generations_grow(ops: list[tuple[Any, ...]]) -> None:
    asyncio.run(_race(ops))


async def test_swap_many_holds_or_fails_each_on_its_own(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    a, b = stores
    assert await a.swap(LEASE, "x", None, {"v": 1}) is not None
    revisions = await b.swap_many(
        LEASE,
        [
            ("x", {"v": 1}, {"v": 2}),  # as expected: written
            ("y", {"v": 9}, {"v": 1}),  # not what is there (absent): not written
            ("z", None, {"v": 3}),  # absent as expected: written
            ("w", None, None),  # deleting what is absent: nothing to do
        ],
    )
    assert revisions[0] is not None and revisions[2] == revisions[0] + 1
    assert revisions[1] is None and revisions[3] == 0
    assert await a.get(LEASE, "x") == {"v": 2} and await a.get(LEASE, "z") == {"v": 3}
    assert await a.get(LEASE, "y") is None
    assert await b.swap_many(LEASE, [("x", {"v": 1}, None)]) == [None]  # stale: kept
    assert await a.get(LEASE, "x") == {"v": 2}


# -- keepers on the real loop clock: one timer per session --------------------------

SHORT_TTL = 0.9  # renewed every 0.3 s: the test runs for about a second


async def _kept_for_real(store: Any, count: int) -> tuple[list[LeaseKeeper], list[int], Any]:
    keepers: list[LeaseKeeper] = []
    steps = [0] * count
    losses: list[int] = []
    for i in range(count):
        lease = Lease(store, f"cluster/c-{i}", "r-1", ttl_s=SHORT_TTL, host="h")
        keeper = LeaseKeeper(
            lease, lambda: True, lambda holding, i=i: losses.append(i) if not holding else None
        )
        step = keeper.step

        async def counted(step: Any = step, i: int = i) -> float:
            steps[i] += 1
            return float(await step())

        keeper.step = counted  # type: ignore[method-assign]
        keepers.append(keeper)
    tasks = [asyncio.create_task(keeper.run()) for keeper in keepers]
    for _ in range(100):
        if all(keeper.holding for keeper in keepers):
            break
        await asyncio.sleep(0.02)
    assert all(keeper.holding for keeper in keepers)
    return keepers, steps, (tasks, losses)


async def test_one_timer_renews_the_session_for_every_keeper(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    store = CountingStore(stores[0])
    keepers, steps, (tasks, losses) = await _kept_for_real(store, 20)
    try:
        store.swaps.clear()
        before = list(steps)
        await asyncio.sleep(1.0)
        assert all(keeper.holding and keeper.lease.held() for keeper in keepers)
        assert set(store.swaps) == {SESSION_PREFIX + "r-1"}
        assert 2 <= len(store.swaps) <= 4  # about one a third of the TTL, for all 20
        assert steps == before  # no keeper woke: the session's timer renewed for all
        assert losses == []
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_keepers_are_told_at_once_when_their_session_lapses(
    stores: tuple[SQLiteStore, SQLiteStore], caplog: pytest.LogCaptureFixture
) -> None:
    """The store stops answering: the session's timer cannot renew, and wakes every
    keeper when the session lapses (at TTL minus a fifth), so each reports the loss then,
    though none would have woken by itself for several TTLs. The log says what made the
    renewal late: the event loop or the store."""

    store = Hanging(stores[0])
    keepers, _, (tasks, losses) = await _kept_for_real(store, 10)
    try:
        store.hang = True
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = keepers[0].lease.valid_until
        while len(losses) < 10 and loop.time() - start < 3 * SHORT_TTL:
            await asyncio.sleep(0.01)
        assert sorted(losses) == list(range(10))
        assert loop.time() < deadline + SHORT_TTL / 5  # told before anyone could take over
        assert not any(keeper.lease.held() for keeper in keepers)
        (warning,) = {r.getMessage() for r in caplog.records if "renewal started" in r.message}
        assert "waited" in warning and "for the store" in warning and "event loop lag" in warning
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_the_session_is_renewed_ahead_of_the_stores_queue(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    """The store's thread is busy (a long queue of other writes, here one that takes
    2 s): the session's renewal goes around it (``swap_now``: a thread and connection of
    its own) instead of waiting, so the process's leases do not lapse behind it."""
    import threading

    clock = Clock()
    store = stores[0]
    one = _lease(store, "cluster/c-1", "r-1", clock)
    assert await one.try_acquire()
    release = threading.Event()
    loop = asyncio.get_running_loop()
    busy = loop.run_in_executor(store._executor, lambda: release.wait(2.0))
    try:
        clock.now += TTL / 3
        started = loop.time()
        async with asyncio.timeout(1.0):
            assert await one.try_acquire()  # renewed: not behind the busy thread
        assert loop.time() - started < 1.0
        session = await store.get_now(LEASE, SESSION_PREFIX + "r-1")
        assert session is not None and session["renewed"] == clock.now
    finally:
        release.set()
        await busy


async def test_loop_lag_is_how_long_a_callback_waits() -> None:
    loop = asyncio.get_running_loop()
    assert await loop_lag() >= 0
    loop.call_soon(time.sleep, 0.05)  # a callback ahead in the queue blocks the loop
    assert await loop_lag() >= 0.05


def _watched_keepers(store: Any, count: int) -> list[LeaseKeeper]:
    """Keepers of another process (``r-2``) that want ``cluster/c-0`` ... ``c-<count-1>``
    and are woken by their owner (``watched``)."""
    return [
        LeaseKeeper(
            Lease(store, f"cluster/c-{i}", "r-2", ttl_s=SHORT_TTL, host="h"),
            lambda: True,
            lambda _: None,
            watched=True,
        )
        for i in range(count)
    ]


async def test_keepers_waiting_on_another_holder_read_once_per_its_renewal_and_take_at_its_lapse(
    stores: tuple[SQLiteStore, SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 leases held by one process (its keepers running); 20 watched keepers of another
    process want them. The waiting keepers sleep (their owner wakes them on changes) while
    one watch of the holder's session reads it once per its renewal period: no read per
    lease (every third of the TTL, two reads each, they cost 120 reads a second here). When
    the holder stops renewing, the watch wakes them at its session's expiry and they take
    every lease then, not at their next look (4 TTLs away)."""

    # Their own next look is far away: only the watch can wake them in time.
    monkeypatch.setattr(lease_module, "WAITING_CHECK_TTLS", 100)
    holder_store = Hanging(stores[0])
    _, _, (held_tasks, _) = await _kept_for_real(holder_store, 20)
    waiting_store = CountingStore(stores[1])
    waiting = _watched_keepers(waiting_store, 20)
    tasks = [asyncio.create_task(keeper.run()) for keeper in waiting]
    loop = asyncio.get_running_loop()
    try:
        await asyncio.sleep(0.1)  # every waiting keeper made its first attempt
        reads = waiting_store.gets
        await asyncio.sleep(1.0)  # the holder renews three times meanwhile
        assert not any(keeper.holding for keeper in waiting)
        assert waiting_store.gets - reads <= 5  # one watch, a read per renewal period
        holder_store.hang = True  # the holder can no longer renew
        session = await stores[1].get(LEASE, SESSION_PREFIX + "r-1")
        assert session is not None
        lapse = loop.time() + (session["expires"] - time.time())
        while not all(keeper.holding for keeper in waiting) and loop.time() < lapse + 3.0:
            await asyncio.sleep(0.01)
        assert all(keeper.holding for keeper in waiting)
        assert loop.time() < lapse + 1.5  # woken at the lapse by the watch
        assert all(keeper.lease.generation == 2 for keeper in waiting)
        # The watch of the session that ended goes with it (none piles up per process
        # restart of the other holder).
        assert not lease_module._FOREIGN.get(waiting_store)
    finally:
        for task in [*tasks, *held_tasks]:
            task.cancel()
        await asyncio.gather(*tasks, *held_tasks, return_exceptions=True)


async def test_a_watch_nobody_waits_on_any_more_is_forgotten(
    stores: tuple[SQLiteStore, SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keepers waiting on another holder's session stop (their cluster went, the process
    stops): the watch of that session goes with the last of them."""
    monkeypatch.setattr(lease_module, "WAITING_CHECK_TTLS", 100)
    _, _, (held_tasks, _) = await _kept_for_real(stores[0], 3)
    waiting_store = CountingStore(stores[1])
    waiting = _watched_keepers(waiting_store, 3)
    tasks = [asyncio.create_task(keeper.run()) for keeper in waiting]
    try:
        await asyncio.sleep(0.1)  # every waiting keeper made its first attempt
        assert len(lease_module._FOREIGN.get(waiting_store) or {}) == 1
        for task in tasks[:2]:
            task.cancel()
        await asyncio.gather(*tasks[:2], return_exceptions=True)
        assert len(lease_module._FOREIGN.get(waiting_store) or {}) == 1  # one still waits
        tasks[2].cancel()
        await asyncio.gather(tasks[2], return_exceptions=True)
        assert not lease_module._FOREIGN.get(waiting_store)
    finally:
        for task in [*tasks, *held_tasks]:
            task.cancel()
        await asyncio.gather(*tasks, *held_tasks, return_exceptions=True)


def test_a_watched_keeper_that_waits_or_does_not_want_sleeps_long() -> None:
    """``Lease.waiting_delay``: the usual delay while nothing would wake the keeper;
    three to four TTLs when it does not want the lease or another holder's end wakes it."""
    lease = _lease(CountingStore(cast(Any, None)), "cluster/c-1", "r-1", Clock())
    assert lease.waiting_delay(TTL / 3, wanted=True) == TTL / 3
    for _ in range(20):
        assert 3 * TTL <= lease.waiting_delay(TTL / 3, wanted=False) <= 4 * TTL

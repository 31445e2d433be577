"""The SQLite store takes its operations to its thread in trips: many at once, each with
its own transaction and outcome, in the order they were asked for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.store.base import AlreadyExists, StoreError
from gateway.store.sqlite import TRIP_MAX_OPS, SQLiteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = await SQLiteStore(tmp_path / "db").open()
    try:
        yield opened
    finally:
        await opened.close()


def count_trips(store: SQLiteStore) -> list[int]:
    """Wraps the store thread's submit: one entry (the trip's size) per trip."""
    trips: list[int] = []
    submit = store._executor.submit

    def counting(fn: Any, *args: Any) -> Any:
        trips.append(len(args[-1]))
        return submit(fn, *args)

    store._executor.submit = counting  # type: ignore[method-assign,assignment]
    return trips


async def test_operations_asked_together_go_in_few_trips_in_order(store: SQLiteStore) -> None:
    trips = count_trips(store)
    count = 2 * TRIP_MAX_OPS + 10
    revisions = await asyncio.gather(
        *(store.put("things", f"k{i:04d}", {"id": f"k{i:04d}", "n": i}) for i in range(count))
    )
    assert revisions == sorted(revisions)  # run in the order asked
    assert len(set(revisions)) == count
    assert sum(trips) == count
    assert len(trips) <= 4 and max(trips) <= TRIP_MAX_OPS
    listed = await store.list("things")
    assert [doc["n"] for doc in listed] == list(range(count))


async def test_each_operation_has_its_own_outcome(store: SQLiteStore) -> None:
    await store.create("things", "taken", {"id": "taken"})
    results = await asyncio.gather(
        store.create("things", "a", {"id": "a"}),
        store.create("things", "taken", {"id": "taken", "again": True}),
        store.create("things", "b", {"id": "b"}),
        store.swap("things", "a", {"id": "wrong"}, {"id": "a", "x": 1}),
        store.get("things", "taken"),
        return_exceptions=True,
    )
    assert isinstance(results[0], int) and isinstance(results[2], int)
    assert isinstance(results[1], AlreadyExists)
    assert results[3] is None  # compare-and-set refused
    assert results[4] == {"id": "taken"}  # the failed create left it as it was
    assert await store.get("things", "b") == {"id": "b"}


async def test_a_failing_query_is_a_store_error_and_the_next_trip_goes(
    store: SQLiteStore,
) -> None:
    def broken() -> None:
        store._conn.execute("SELECT * FROM no_such_table")

    with pytest.raises(StoreError):
        await store._run(broken)
    assert await store.put("things", "after", {"id": "after"}) > 0


async def test_an_operation_cancelled_before_its_trip_is_not_run(store: SQLiteStore) -> None:
    release = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.create_future()

    def hold() -> None:  # keeps the store's thread busy: later operations wait their trip
        loop.call_soon_threadsafe(started.set_result, None)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)

    busy = asyncio.ensure_future(store._run(hold))
    await started
    waiting = asyncio.ensure_future(store.put("things", "never", {"id": "never"}))
    kept = asyncio.ensure_future(store.put("things", "kept", {"id": "kept"}))
    await asyncio.sleep(0.01)
    waiting.cancel()
    release.set()
    await busy
    assert await kept > 0
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await store.get("things", "never") is None
    assert await store.get("things", "kept") == {"id": "kept"}


async def test_after_close_operations_fail_with_a_store_error(tmp_path: Path) -> None:
    closed = await SQLiteStore(tmp_path / "db").open()
    await closed.close()
    with pytest.raises((StoreError, RuntimeError)):
        await closed.get("things", "x")

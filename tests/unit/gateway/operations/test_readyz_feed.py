"""/readyz fails, saying why, while the store's change feed is behind its bound."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from gateway.identity.directory import DIRECTORY, Directory
from gateway.keys import READY
from gateway.operations.health import _problems
from gateway.store.records import REPLICA, Replica
from gateway.store.sqlite import SQLiteStore
from gateway.telemetry.drain import DRAIN, Drain
from gateway.telemetry.metrics import STORE_FEED_LAG


async def test_a_feed_behind_its_bound_is_not_ready(tmp_path: Path) -> None:
    store = await SQLiteStore(tmp_path / "db").open()
    try:
        directory = Directory(store)
        directory.max_feed_lag_s = 0.05
        await directory.load()
        app = web.Application()
        app[DIRECTORY] = directory
        app[READY] = [True]
        app[DRAIN] = Drain()
        assert await _problems(app) == []
        # Our write, and no feed running to bring it back.
        await directory.put(REPLICA, Replica("r-1", "h", 1, 0.0, 0.0))
        await asyncio.sleep(0.1)
        problems = await _problems(app)
        assert len(problems) == 1 and problems[0].startswith("store change feed is")
        assert "the caches may be stale" in problems[0]
        assert STORE_FEED_LAG._value.get() >= 0.1  # type: ignore[attr-defined]
        directory.catch_up()  # the change log brings it back
        assert await _problems(app) == []
    finally:
        await store.close()

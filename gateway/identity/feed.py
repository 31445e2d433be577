"""The directory following the store's change feed (``Directory.follow``).

Kept out of the compiled build on purpose (``config/native.py`` lists ``directory.py``,
not this module): compiled by mypyc, this loop stopped following after the second
``Compacted`` a process saw (the task ended as cancelled, without a reload), while the
same source ran as Python is right; tests/unit/gateway/identity/test_directory_feed.py and
tests/component/test_store_window.py run several in one process and caught it. It is
not on the request path: one loop per process, woken per change.

Fallen behind what the feed keeps (``Compacted``, seen by the feed or by
``catch_up``): reload everything, then follow on from there; a reload that fails (the
store is down) is tried again after a pause of at most ``RELOAD_RETRY_MAX_S`` (not the
task guard's minute). A feed that stalls (our own writes not back within
``max_feed_lag_s``: a watch connection silently lost on the way) is dropped and opened
again from the last revision it delivered.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from gateway.store.base import Change, Compacted, Store, StoreError

logger = logging.getLogger("gateway.identity.directory")


class Directory(Protocol):
    """What of ``gateway.identity.directory.Directory`` the loop uses (no import: the
    directory imports this module)."""

    store: Store
    revision: int
    max_feed_lag_s: float

    @property
    def refollow(self) -> asyncio.Event: ...

    def needs_reload(self) -> bool: ...

    def reload_needed(self) -> None: ...

    async def reload(self) -> None: ...

    def feed_stalled(self) -> bool: ...

    def apply_change(self, change: Change) -> None: ...


RELOAD_RETRY_MIN_S = 0.05
RELOAD_RETRY_MAX_S = 1.0


async def follow(directory: Directory) -> None:
    pause = RELOAD_RETRY_MIN_S
    while True:
        if directory.needs_reload():
            try:
                await directory.reload()
            except StoreError as exc:
                logger.warning("store: reload failed (%s); retrying", exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RELOAD_RETRY_MAX_S)
                continue
            pause = RELOAD_RETRY_MIN_S
        feed = asyncio.create_task(_follow_feed(directory), name="directory feed")
        woken = asyncio.create_task(directory.refollow.wait())
        try:
            while not await _wait_or_stall(directory, {feed, woken}):
                pass
        finally:
            feed.cancel()
            woken.cancel()
            await asyncio.wait({feed, woken})
        directory.refollow.clear()
        if feed.done() and not feed.cancelled():
            error = feed.exception()
            if error is None:
                return  # the feed ended (only a test's store does)
            if not isinstance(error, Compacted):
                raise error
            logger.warning("fell behind the store's change feed (%s): reloading", error)
            directory.reload_needed()


async def _wait_or_stall(directory: Directory, tasks: set[asyncio.Task[Any]]) -> bool:
    """Whether one of ``tasks`` ended or the feed stalled (then it is started again)."""
    done, _ = await asyncio.wait(
        tasks, timeout=directory.max_feed_lag_s / 2, return_when=asyncio.FIRST_COMPLETED
    )
    return bool(done) or directory.feed_stalled()


async def _follow_feed(directory: Directory) -> None:
    async for change in directory.store.changes(directory.revision):
        directory.apply_change(change)

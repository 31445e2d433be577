"""When the cyclic garbage collector makes its full collections (gateway and agent).

CPython collects its oldest generation once ten collections of the middle one have
happened since the last full one and the objects promoted meanwhile are a quarter of
those that survived it. A full collection visits every object the collector tracks, and
a process holding thousands of tunnels or watches tracks millions: under churn (a
restarted gateway taking its agents back) that rule ran a full collection every few
seconds, each a pause of over a second, and they were most of the process's CPU
(docs/benchmarks.md, "The collector at 10,000 tunnels").

Here the automatic full collections are off and :class:`FullCollections` makes them
from a task: due under the same count rule, but never sooner after the last one than
that one's length divided by ``FULL_SHARE``, so that they take at most that share of the
process's time whatever its size. A small process, whose full collections take
milliseconds, still makes one every ``MIN_INTERVAL_S`` while it allocates; the young
generations are collected as before. ``decide`` is the rule, without I/O or clocks.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

FULL_SHARE = 0.05
"""The most of the process's time full collections may take."""
MIN_INTERVAL_S = 1.0
"""Full collections are at least this far apart, however short."""
CHECK_S = 1.0
"""How often the task looks whether one is due."""
YOUNG_COLLECTIONS = 10
"""Collections of the middle generation since the last full one after which another is
due (CPython's own third threshold)."""
NEVER = 2**30
"""The third threshold while the task decides (the interpreter then never reaches it)."""


@dataclass(frozen=True)
class Last:
    """The last full collection: when it ended and how long it took (seconds)."""

    ended: float
    took: float


def decide(now: float, middle_collections: int, last: Last) -> bool:
    """Whether a full collection is due now: the middle generation was collected more
    than ``YOUNG_COLLECTIONS`` times since the last one, and the last one ended long
    enough ago that this one keeps full collections within ``FULL_SHARE`` of the time."""
    if middle_collections <= YOUNG_COLLECTIONS:
        return False
    return now - last.ended >= max(MIN_INTERVAL_S, last.took / FULL_SHARE)


class FullCollections:
    """Takes the full collections over from the interpreter while ``run`` runs."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        collect: Callable[[int], int] = gc.collect,
        count: Callable[[], tuple[int, int, int]] = gc.get_count,
    ) -> None:
        self._clock = clock
        self._collect = collect
        self._count = count
        self.last = Last(clock(), 0.0)
        self.collections = 0

    def check(self) -> bool:
        """Make a full collection if one is due; whether one was made."""
        now = self._clock()
        if not decide(now, self._count()[2], self.last):
            return False
        self._collect(2)
        ended = self._clock()
        self.last = Last(ended, ended - now)
        self.collections += 1
        return True

    async def run(self, check_s: float = CHECK_S) -> None:
        """Until cancelled; the interpreter's own thresholds are put back then."""
        young, middle, old = gc.get_threshold()
        gc.set_threshold(young, middle, NEVER)
        try:
            while True:
                await asyncio.sleep(check_s)
                self.check()
        finally:
            gc.set_threshold(young, middle, old)

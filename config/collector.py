"""How often the cyclic garbage collector may make a full collection (gateway and agent).

CPython collects its oldest generation once ten collections of the middle one have
happened since the last full one and the objects promoted meanwhile are a quarter of
those that survived it. A full collection visits every object the collector tracks, and
a process holding thousands of tunnels or watches tracks millions: under churn (a
restarted gateway taking its agents back) that rule ran a full collection every few
seconds, each a pause of over a second, and they were most of the process's CPU
(docs/benchmarks.md, "The collector at 10,000 tunnels").

:class:`FullCollections` keeps the interpreter's rule and adds a floor in time: after
each full collection (the interpreter's or anyone's ``gc.collect()``), the next may come
no sooner than that one's length divided by ``FULL_SHARE`` (and ``MIN_INTERVAL_S``), so
that full collections take at most that share of the process's time whatever its size.
Meanwhile the oldest generation's threshold is out of reach; a task gives it back when
the time is up. A small process, whose full collections take milliseconds, collects as
before; the young generations are never held. ``allowed_at`` is the rule, without I/O.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FULL_SHARE = 0.05
"""The most of the process's time full collections may take."""
MIN_INTERVAL_S = 1.0
"""Full collections are at least this far apart, however short."""
CHECK_S = 1.0
"""How often the task looks whether the hold is over."""
NEVER = 2**30
"""The oldest generation's threshold while held (the interpreter never reaches it)."""


@dataclass(frozen=True)
class Last:
    """The last full collection: when it ended and how long it took (seconds)."""

    ended: float
    took: float


def allowed_at(last: Last) -> float:
    """When the next full collection may start: late enough that the quiet time after
    ``last`` pays for it within ``FULL_SHARE`` of the time."""
    return last.ended + max(MIN_INTERVAL_S, last.took / FULL_SHARE)


class FullCollections:
    """Holds full collections back after each one while ``run`` runs."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._began = 0.0
        self.last: Last | None = None
        self.collections = 0
        """Full collections seen while running."""
        self.held = False
        self._threshold = gc.get_threshold()[2]

    def observe(self, phase: str, info: dict[str, Any]) -> None:
        """A ``gc.callbacks`` entry: after a full collection, hold the next one."""
        if info["generation"] != 2:
            return
        now = self._clock()
        if phase == "start":
            self._began = now
            return
        self.last = Last(now, now - self._began)
        self.collections += 1
        self._hold()

    def check(self) -> None:
        """Give the interpreter its threshold back once the hold is over."""
        if self.held and self.last is not None and self._clock() >= allowed_at(self.last):
            self.held = False
            young, middle, _ = gc.get_threshold()
            gc.set_threshold(young, middle, self._threshold)

    def _hold(self) -> None:
        if not self.held:
            self.held = True
            young, middle, _ = gc.get_threshold()
            gc.set_threshold(young, middle, NEVER)

    async def run(self, check_s: float = CHECK_S) -> None:
        """Until cancelled; the interpreter's own thresholds are put back then."""
        gc.callbacks.append(self.observe)
        try:
            while True:
                await asyncio.sleep(check_s)
                self.check()
        finally:
            gc.callbacks.remove(self.observe)
            young, middle, _ = gc.get_threshold()
            gc.set_threshold(young, middle, self._threshold)
            self.held = False

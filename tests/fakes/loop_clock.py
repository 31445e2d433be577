"""Virtual time for the running asyncio event loop: timer tests without real sleeps.

``with virtual_time() as clock:`` makes ``loop.time()`` a virtual clock. Whenever the
loop has nothing ready and would wait in ``select`` for its next timer, the clock jumps
to that timer instead (the select only polls), so ``asyncio.sleep(20)``, a 28 s keepalive
timeout or ``asyncio.timeout`` fire at once, in the same order and at the same loop
times as for real. The code under test needs nothing special: it reads loop time, as the
tunnel's session does for its keepalive (``Session.loop.time()``, ``call_later``).

Real I/O still works (the select polls it), but virtual time does not wait for it: use
this where the peers are in the same loop (``MemoryTransport``) or already connected.
``clock.advance(s)`` moves time on without running the loop (a loop that hangs).
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
from collections.abc import Iterator
from typing import Any


class VirtualClock:
    """The loop time of one event loop while :func:`virtual_time` is active."""

    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.contextmanager
def virtual_time() -> Iterator[VirtualClock]:
    """Virtual time for the running loop (a selector event loop) inside the block."""
    loop = asyncio.get_running_loop()
    selector = getattr(loop, "_selector", None)
    if not isinstance(selector, selectors.BaseSelector):
        raise RuntimeError(f"virtual time needs a selector event loop, not {type(loop)}")
    clock = VirtualClock(loop.time())
    select = selector.select

    def virtual_select(timeout: float | None = None) -> list[Any]:
        if timeout is None:
            return select(None)  # no timer: wait for real I/O
        events = select(0)
        if not events and timeout > 0:
            clock.advance(timeout)  # straight to the next timer
        return events

    loop.time = clock.time  # type: ignore[method-assign]
    selector.select = virtual_select  # type: ignore[method-assign]
    try:
        yield clock
    finally:
        del selector.select
        del loop.time

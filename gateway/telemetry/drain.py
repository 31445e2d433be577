"""Requests in flight, so that a stopping gateway can let them finish.

On SIGTERM the gateway stops accepting connections, ends the long-running answers
(watches, followed logs) at once and cleanly, and then waits for the rest to finish
within the grace period (see ``gateway.operations.server``). Tunnels are not requests: agents are
told to go elsewhere only after the requests that use their tunnels are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from aiohttp import web

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def stopping_step(name: str) -> Iterator[None]:
    """Log how long one step of stopping took (a slow stop at scale says where)."""
    start = time.monotonic()
    try:
        yield
    finally:
        logger.info("stopping: %s took %.2f s", name, time.monotonic() - start)


class _Discard:
    """Unregisters one ender (an object, not a closure: one is held per open watch)."""

    __slots__ = ("drain", "end")

    def __init__(self, drain: Drain, end: Callable[[], None]) -> None:
        self.drain = drain
        self.end = end

    def __call__(self) -> None:
        # The drain's set as it is now: ``start`` replaces it.
        self.drain._enders.discard(self.end)


class Drain:
    def __init__(self) -> None:
        self.active = 0
        self.draining = False
        self._idle: asyncio.Future[None] | None = None
        self._enders: set[Callable[[], None]] = set()

    def enter(self) -> None:
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def add_ender(self, end: Callable[[], None]) -> Callable[[], None]:
        """Register how to end a long-running answer; returns how to unregister it.

        Called at once if the gateway is already stopping.
        """
        if self.draining:
            end()
            return _nothing
        self._enders.add(end)
        return _Discard(self, end)

    def start(self) -> int:
        """Stop: end every long-running answer. Returns how many were ended."""
        self.draining = True
        enders, self._enders = list(self._enders), set()
        for end in enders:  # an end may unregister others at once (a parked answer's)
            end()
        return len(enders)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False if ``timeout_s`` passed first."""
        if self.active == 0:
            return True
        self._idle = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._idle)
        except TimeoutError:
            return False
        return True


def _nothing() -> None:
    return None


DRAIN = web.AppKey("drain", Drain)

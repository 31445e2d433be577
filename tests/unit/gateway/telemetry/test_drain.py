"""Drain: requests in flight, enders of long-running answers, waiting until idle."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.telemetry.drain import Drain


def test_enter_leave_active() -> None:
    drain = Drain()
    assert (drain.active, drain.draining) == (0, False)
    drain.enter()
    drain.enter()
    assert drain.active == 2
    drain.leave()
    assert drain.active == 1
    drain.leave()
    assert drain.active == 0


def test_start_calls_each_ender_once_and_counts_them() -> None:
    drain = Drain()
    ended: list[str] = []
    drain.add_ender(lambda: ended.append("watch"))
    drain.add_ender(lambda: ended.append("logs"))
    unregister = drain.add_ender(lambda: ended.append("done already"))
    unregister()
    unregister()  # twice is harmless
    assert drain.start() == 2
    assert drain.draining
    assert sorted(ended) == ["logs", "watch"]
    assert drain.start() == 0  # nothing is ended twice
    assert sorted(ended) == ["logs", "watch"]


def test_add_ender_while_draining_ends_at_once() -> None:
    drain = Drain()
    drain.start()
    ended: list[int] = []
    unregister = drain.add_ender(lambda: ended.append(1))
    assert ended == [1]
    unregister()
    assert drain.start() == 0
    assert ended == [1]


async def test_wait_idle_when_idle() -> None:
    assert await Drain().wait_idle(0.01)


async def test_wait_idle_returns_when_the_last_request_leaves() -> None:
    drain = Drain()
    drain.enter()
    drain.enter()
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, drain.leave)
    loop.call_later(0.02, drain.leave)
    started = loop.time()
    assert await drain.wait_idle(5)
    assert drain.active == 0
    assert loop.time() - started < 1


async def test_wait_idle_times_out() -> None:
    drain = Drain()
    drain.enter()
    assert not await drain.wait_idle(0.02)
    drain.leave()  # after the timeout: harmless
    assert await drain.wait_idle(0.02)


def test_an_ender_may_unregister_itself_and_others_while_the_drain_starts() -> None:
    """A parked answer ends synchronously when told to, and unregisters itself then (as
    can others ending with it): starting the drain must not trip over that."""
    drain = Drain()
    ended: list[int] = []
    forgets: list[Callable[[], None]] = []

    def ender(index: int) -> Callable[[], None]:
        def end() -> None:
            ended.append(index)
            for forget in forgets:
                forget()

        return end

    forgets.extend(drain.add_ender(ender(index)) for index in range(5))
    assert drain.start() == 5
    assert sorted(ended) == [0, 1, 2, 3, 4]
    forgets[0]()  # after the start: nothing to undo, no error

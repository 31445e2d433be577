"""config.tasks.guard: an endless task that fails or ends is logged and started again."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

import pytest

from config.tasks import RESTART_MAX_S, RESTART_S, guard
from tests.fakes.loop_clock import virtual_time


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_failing_task_is_logged_and_started_again_with_growing_pauses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    done = asyncio.Event()

    async def work() -> None:
        starts.append(loop.time())
        if len(starts) == 5:
            done.set()
            await asyncio.sleep(3600)  # the fifth run keeps going
        raise RuntimeError(f"broken {len(starts)}")

    with virtual_time(), caplog.at_level(logging.ERROR, logger="config.tasks"):
        task = asyncio.create_task(guard(work, "the work"))
        await done.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    pauses = [b - a for a, b in itertools.pairwise(starts)]
    assert pauses == pytest.approx([RESTART_S, 2 * RESTART_S, 4 * RESTART_S, 8 * RESTART_S])
    records = errors(caplog)
    assert len(records) == 4
    assert all("the work failed" in r.getMessage() for r in records)
    assert records[0].exc_info is not None and "broken 1" in str(records[0].exc_info[1])


async def test_a_task_that_ends_is_logged_and_started_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0
    again = asyncio.Event()

    async def work() -> None:
        nonlocal runs
        runs += 1
        if runs == 2:
            again.set()
            await asyncio.sleep(3600)

    log = logging.getLogger("tests.tasks")
    with virtual_time(), caplog.at_level(logging.ERROR, logger="tests.tasks"):
        task = asyncio.create_task(guard(work, "the loop", log))
        await again.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    records = errors(caplog)
    assert [r.name for r in records] == ["tests.tasks"]
    assert "the loop has finished unexpectedly" in records[0].getMessage()


async def test_the_pause_is_capped_and_starts_over_after_a_long_run() -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    done = asyncio.Event()

    async def work() -> None:
        starts.append(loop.time())
        if len(starts) == 9:
            await asyncio.sleep(RESTART_MAX_S)  # a long, healthy run, then a failure
        if len(starts) == 11:
            done.set()
            await asyncio.sleep(3600)
        raise RuntimeError("broken")

    with virtual_time():
        task = asyncio.create_task(guard(work, "the work", logging.getLogger("tests.tasks")))
        await done.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    pauses = [b - a for a, b in itertools.pairwise(starts)]
    assert max(pauses[:8]) == pytest.approx(RESTART_MAX_S)  # 1, 2, 4 ... capped at 60
    assert pauses[8] == pytest.approx(RESTART_MAX_S + RESTART_S)  # the run, then 1 s
    assert pauses[9] == pytest.approx(2 * RESTART_S)


async def test_cancelling_stops_it_without_a_log(caplog: pytest.LogCaptureFixture) -> None:
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.sleep(3600)

    with caplog.at_level(logging.ERROR):
        task = asyncio.create_task(guard(work, "the work"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert errors(caplog) == []

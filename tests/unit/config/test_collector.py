"""Full collections held back after each one for long enough that they take at most
their share of the time; the interpreter's own rule decides otherwise."""

from __future__ import annotations

import asyncio
import gc
import itertools
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config import collector
from config.collector import FULL_SHARE, MIN_INTERVAL_S, NEVER, Last, allowed_at


def test_a_long_collection_puts_the_next_further_off() -> None:
    assert allowed_at(Last(ended=100.0, took=2.0)) == pytest.approx(100.0 + 2.0 / FULL_SHARE)


def test_short_collections_are_still_a_minimum_interval_apart() -> None:
    assert allowed_at(Last(ended=10.0, took=0.001)) == 10.0 + MIN_INTERVAL_S


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def held(pacer: collector.FullCollections) -> bool:
    return pacer.held  # (read through a call: the tests change it behind mypy's back)


def full(pacer: collector.FullCollections, clock: Clock, took: float) -> None:
    """A full collection as the interpreter reports it to its callbacks."""
    pacer.observe("start", {"generation": 2})
    clock.now += took
    pacer.observe("stop", {"generation": 2, "collected": 0, "uncollectable": 0})


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def test_after_a_full_collection_the_next_waits_then_the_threshold_comes_back(
    thresholds: tuple[int, int, int],
) -> None:
    clock = Clock()
    pacer = collector.FullCollections(clock)
    pacer.observe("start", {"generation": 0})  # young ones change nothing
    pacer.observe("stop", {"generation": 1, "collected": 0, "uncollectable": 0})
    assert not held(pacer) and gc.get_threshold() == thresholds
    full(pacer, clock, took=0.5)
    assert held(pacer) and gc.get_threshold()[2] == NEVER
    assert gc.get_threshold()[:2] == thresholds[:2]  # the young generations as they were
    clock.now = allowed_at(Last(0.5, 0.5)) - 0.01
    pacer.check()
    assert held(pacer)
    clock.now += 0.01
    pacer.check()
    assert not held(pacer) and gc.get_threshold() == thresholds


@given(st.lists(st.tuples(st.floats(0.0, 60.0), st.floats(0.0, 3.0)), max_size=50))
def test_full_collections_never_take_more_than_their_share(
    wants: list[tuple[float, float]],
) -> None:
    """The interpreter wants a full collection at arbitrary moments and each takes an
    arbitrary time; it gets one only while not held (checked each second): then the
    quiet time after each one is at least its length divided by ``FULL_SHARE``."""
    before = gc.get_threshold()
    try:
        clock = Clock()
        pacer = collector.FullCollections(clock)
        made: list[tuple[float, float]] = []  # (start, length)
        for gap, took in wants:
            end = clock.now + gap
            while clock.now < end:  # the task's checks meanwhile
                clock.now = min(end, clock.now + collector.CHECK_S)
                pacer.check()
            if gc.get_threshold()[2] != NEVER:
                made.append((clock.now, took))
                full(pacer, clock, took)
        for (start, took), (next_start, _) in itertools.pairwise(made):
            assert next_start - (start + took) >= max(MIN_INTERVAL_S, took / FULL_SHARE) - 1e-9
    finally:
        gc.set_threshold(*before)


async def test_the_task_sees_real_collections_and_puts_everything_back(
    thresholds: tuple[int, int, int],
) -> None:
    clock = Clock()  # (its own time: a real collection's length varies with the process)
    pacer = collector.FullCollections(clock)
    task = asyncio.create_task(pacer.run(check_s=0.01))
    try:
        await asyncio.sleep(0)
        assert pacer.observe in gc.callbacks
        gc.collect()
        assert pacer.collections == 1 and pacer.last == Last(0.0, 0.0)
        assert gc.get_threshold()[2] == NEVER
        await asyncio.sleep(0.05)  # checks meanwhile: not yet
        assert held(pacer)
        clock.now = MIN_INTERVAL_S
        for _ in range(500):
            await asyncio.sleep(0.01)
            if not held(pacer):
                break
        assert not held(pacer) and gc.get_threshold() == thresholds
        gc.collect(1)  # a young one is no reason to hold
        assert not held(pacer)
        gc.collect()
        assert held(pacer)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert pacer.observe not in gc.callbacks
    assert gc.get_threshold() == thresholds

"""Full collections paced by a task: due under CPython's count rule, within their share
of the time, and cyclic garbage in the oldest generation is still collected."""

from __future__ import annotations

import asyncio
import gc
import itertools
import weakref
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config import collector
from config.collector import FULL_SHARE, MIN_INTERVAL_S, YOUNG_COLLECTIONS, Last, decide


def test_not_due_before_the_middle_generation_was_collected_enough() -> None:
    last = Last(ended=0.0, took=0.0)
    assert not decide(1000.0, YOUNG_COLLECTIONS, last)
    assert decide(1000.0, YOUNG_COLLECTIONS + 1, last)


def test_a_long_collection_puts_the_next_further_off() -> None:
    last = Last(ended=100.0, took=2.0)  # the next no sooner than 2 / FULL_SHARE later
    wait = 2.0 / FULL_SHARE
    assert not decide(100.0 + wait - 0.01, 50, last)
    assert decide(100.0 + wait, 50, last)


def test_short_collections_are_still_a_minimum_interval_apart() -> None:
    last = Last(ended=10.0, took=0.001)
    assert not decide(10.0 + MIN_INTERVAL_S / 2, 50, last)
    assert decide(10.0 + MIN_INTERVAL_S, 50, last)


@given(
    st.lists(
        st.tuples(
            st.floats(0.0, 5.0),  # seconds between checks
            st.integers(0, 40),  # middle-generation collections seen
            st.floats(0.0, 3.0),  # how long a collection made then takes
        ),
        max_size=60,
    )
)
def test_full_collections_never_take_more_than_their_share(
    checks: list[tuple[float, int, float]],
) -> None:
    """Whatever the checks see, the time spent in full collections after the first is at
    most ``FULL_SHARE`` of the time since the first began (each one is paid for by the
    quiet time that follows the one before it)."""
    now = 0.0
    spent: list[tuple[float, float]] = []  # (start, length)
    counts: Iterator[tuple[int, int, int]] = iter(())
    taking = 0.0

    def clock() -> float:
        return now

    def collect(_generation: int) -> int:
        nonlocal now
        now += taking
        return 0

    pacer = collector.FullCollections(clock=clock, collect=collect, count=lambda: next(counts))
    for gap, middle, length in checks:
        now += gap
        counts = iter([(0, 0, middle)])
        taking = length
        start = now
        if pacer.check():
            spent.append((start, length))
    for (start, length), (next_start, _) in itertools.pairwise(spent):
        assert next_start - (start + length) >= max(MIN_INTERVAL_S, length / FULL_SHARE) - 1e-9


async def test_the_task_collects_cyclic_garbage_of_the_oldest_generation() -> None:
    class Node:
        other: object = None

    first, second = Node(), Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    gc.collect(1)  # both survive into the oldest generation
    del first, second
    for _ in range(YOUNG_COLLECTIONS + 1):
        gc.collect(1)  # young collections leave the oldest generation alone
    assert gone() is not None

    now = [0.0]
    pacer = collector.FullCollections(clock=lambda: now[0])
    before = gc.get_threshold()
    task = asyncio.create_task(pacer.run(check_s=0.01))
    try:
        await asyncio.sleep(0.05)
        assert gc.get_threshold()[2] == collector.NEVER  # the interpreter makes none itself
        assert gone() is not None  # not before the minimum interval
        now[0] = MIN_INTERVAL_S
        for _ in range(100):
            await asyncio.sleep(0.01)
            if gone() is None:
                break
        assert gone() is None
        assert pacer.collections >= 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert gc.get_threshold() == before

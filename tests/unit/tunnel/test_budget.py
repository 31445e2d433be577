"""Budget and ReadTally: the unread tunnel bytes of an owner's readers, counted."""

from __future__ import annotations

import asyncio

from tunnel.streams import Budget, ReadTally


async def test_over_is_called_once_per_turn_when_the_total_passes_the_limit() -> None:
    calls: list[int] = []
    extra = [0]
    budget = Budget(100, lambda: extra[0], lambda: calls.append(budget.total))
    one, two = ReadTally(budget), ReadTally(budget)
    one.add(60)
    two.add(30)
    await asyncio.sleep(0)
    assert calls == []  # 90: under
    extra[0] = 20
    two.add(1)
    one.add(1)
    await asyncio.sleep(0)
    assert calls == [112]  # once, however many adds in the turn
    one.add(-61)
    extra[0] = 0
    two.add(5)
    await asyncio.sleep(0)
    assert calls == [112] and budget.held == 36


async def test_a_detached_tally_leaves_the_budget() -> None:
    budget = Budget(100, int, lambda: None)
    tally = ReadTally(budget)
    tally.add(70)
    tally.detach()
    assert budget.held == 0
    tally.add(-70)  # a late read by a stream still pointing at it
    assert budget.held == 0

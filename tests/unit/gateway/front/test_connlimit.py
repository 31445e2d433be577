from __future__ import annotations

from gateway.front.connlimit import ConnectionLimit


def test_per_address_and_total_limits_and_release() -> None:
    limit = ConnectionLimit(max_connections=3, per_address=2)
    a1, a2 = limit.admit("a"), limit.admit("a")
    assert a1 is not None and a2 is not None
    assert limit.admit("a") is None  # per address
    b1 = limit.admit("b")
    assert b1 is not None
    assert limit.admit("c") is None  # in total
    a1()
    a1()  # twice is once
    assert limit.open == 2 and limit.held_by("a") == 1
    c1 = limit.admit("c")
    assert c1 is not None
    for release in (a2, b1, c1):
        release()
    assert limit.open == 0 and limit.held_by("a") == 0

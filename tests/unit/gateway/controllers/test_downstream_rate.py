"""The per-cluster bound on the gateway's own requests (``downstream.DownstreamRate``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.controllers import downstream
from gateway.controllers.downstream import DownstreamRate


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate_per_cluster() -> None:
    clock = Clock()
    rate = DownstreamRate(10.0, 3, clock)
    assert [rate.wait_for("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rate.wait_for("a") == pytest.approx(0.1)
    assert rate.wait_for("a") == pytest.approx(0.2)
    # Another cluster has its own bucket.
    assert rate.wait_for("b") == 0.0
    clock.now = 10.0  # refilled, never beyond the burst
    assert [rate.wait_for("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rate.wait_for("a") > 0


def test_refuses_a_rate_that_bounds_nothing() -> None:
    with pytest.raises(ValueError):
        DownstreamRate(0.0, 10, Clock())
    with pytest.raises(ValueError):
        DownstreamRate(5.0, 0, Clock())


def test_many_clusters_keep_few_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downstream, "MAX_BUCKETS", 8)
    clock = Clock()
    rate = DownstreamRate(1.0, 2, clock)
    for i in range(100):
        clock.now += 10.0  # every earlier bucket is full again: droppable
        assert rate.wait_for(f"c-{i}") == 0.0
    assert len(rate._buckets) <= 8
    # A bucket that still owes tokens is kept (its debt is not forgiven).
    rate.wait_for("busy")
    rate.wait_for("busy")
    owed = rate.wait_for("busy")
    assert owed > 0
    for i in range(20):
        rate.wait_for(f"d-{i}")
    assert "busy" in rate._buckets


@given(
    rate=st.floats(min_value=0.5, max_value=100.0),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=200),
)
def test_never_more_than_the_burst_plus_the_rate_over_time(
    rate: float, burst: int, gaps: list[float]
) -> None:
    """Requests sent when told (now + wait) never exceed burst + rate * elapsed."""
    clock = Clock()
    limiter = DownstreamRate(rate, burst, clock)
    sent: list[float] = []
    for gap in gaps:
        clock.now += gap
        sent.append(clock.now + limiter.wait_for("c"))
    sent.sort()
    for i, at in enumerate(sent):
        # All requests sent within [0, at]: at most burst + rate * at (+ rounding).
        assert i + 1 <= burst + rate * at + 1e-6

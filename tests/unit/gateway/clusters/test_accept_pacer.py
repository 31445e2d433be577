"""The pace at which a gateway process accepts agents (``tunnels.AcceptPacer``): in no
second more than a quarter of its clusters, however the agents bunch, and every agent
served within a few seconds. Time is given: nothing sleeps."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.clusters.tunnels import (
    ACCEPT_FLOOR_PER_S,
    ACCEPT_MAX_WAIT_S,
    ACCEPT_SHARE_PER_S,
    AcceptPacer,
    Refusal,
)
from tunnel.redial import CLUSTER_FULL_REFUSAL


def _turns(pacer: AcceptPacer, arrivals: list[float]) -> list[float | None]:
    """When each arrival's 101 goes out (None: refused), arrivals in order."""
    out: list[float | None] = []
    for at in arrivals:
        wait = pacer.wait_s(at)
        out.append(None if wait is None else at + wait)
    return out


@settings(max_examples=60, deadline=None)
@given(
    clusters=st.integers(min_value=1, max_value=20_000),
    arrivals=st.lists(st.floats(min_value=0, max_value=30), min_size=1, max_size=3000),
)
def test_no_second_takes_more_than_a_quarter_of_the_clusters(
    clusters: int, arrivals: list[float]
) -> None:
    pacer = AcceptPacer(lambda: clusters)
    turns = [t for t in _turns(pacer, sorted(arrivals)) if t is not None]
    bound = 2 * max(ACCEPT_FLOOR_PER_S, clusters * ACCEPT_SHARE_PER_S)
    assert bound <= max(2 * ACCEPT_FLOOR_PER_S, clusters / 4)
    turns.sort()
    start = 0
    for end, at in enumerate(turns):  # every window [at - 1 s, at]
        while turns[start] <= at - 1.0:
            start += 1
        assert end - start + 1 <= bound + 1e-6


def test_a_restart_storm_is_served_within_seconds_and_none_is_refused() -> None:
    """10,000 agents all at once: a quarter in the first second, all of them in 8 s."""
    pacer = AcceptPacer(lambda: 10_000)
    turns = _turns(pacer, [0.0] * 10_000)
    assert None not in turns
    served = sorted(t for t in turns if t is not None)
    assert sum(1 for t in served if t < 1.0) <= 2_500
    assert served[-1] <= 8.0 + 1e-6


def test_waits_longer_than_the_bound_are_refused_without_taking_a_turn() -> None:
    pacer = AcceptPacer(lambda: 8)  # the floor: 20 a second
    turns = _turns(pacer, [0.0] * 400)
    served = [t for t in turns if t is not None]
    # A burst of 20, then 20 a second for the 15 s an agent may wait: 320.
    assert len(served) == 320 and max(served) == pytest.approx(ACCEPT_MAX_WAIT_S)
    # The 80 refused took nothing: one more turn has come back 1/20 s later.
    assert pacer.wait_s(0.05) == pytest.approx(ACCEPT_MAX_WAIT_S)


def test_the_rate_follows_the_clusters() -> None:
    clusters = [100]
    pacer = AcceptPacer(lambda: clusters[0])
    assert pacer.rate() == ACCEPT_FLOOR_PER_S
    clusters[0] = 8_000
    assert pacer.rate() == 1_000
    assert pacer.wait_s(0.0) == 0.0


def test_a_cluster_queues_no_more_agents_than_it_may_connect() -> None:
    """One registration token cannot hold every other cluster's turns: a cluster with
    ``max_waiting`` agents waiting gets 429 (``cluster-full``) for the next; a turn too far
    off is a 503 with ``Retry-After``."""
    pacer = AcceptPacer(lambda: 8)
    with pacer.waiting_for("c-1"), pacer.waiting_for("c-1"):
        refused = pacer.turn("c-1", 0.0, max_waiting=2)
        assert isinstance(refused, Refusal) and refused.status == 429
        assert refused.why == CLUSTER_FULL_REFUSAL
        assert pacer.turn("c-2", 0.0, max_waiting=2) == 0.0  # another cluster is not held up
    assert pacer.turn("c-1", 0.0, max_waiting=2) == 0.0  # they had their turn
    for _ in range(400):
        turn = pacer.turn("c-3", 0.0, max_waiting=1000)
    assert isinstance(turn, Refusal) and turn.status == 503
    assert turn.retry_after_s == math.ceil(ACCEPT_MAX_WAIT_S)

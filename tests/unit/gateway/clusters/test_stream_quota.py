"""The per-user cap on a cluster's tunnel streams (``tunnel.max_streams_per_user``)."""

from __future__ import annotations

from gateway.clusters.tunnels import StreamQuota


def test_each_user_and_cluster_is_counted_on_its_own() -> None:
    quota = StreamQuota(2)
    a, b, a_elsewhere = ("c-1", "u-a"), ("c-1", "u-b"), ("c-2", "u-a")
    assert quota.take(a, 2) and quota.take(a, 2)
    assert not quota.take(a, 2)
    assert quota.take(b, 2) and quota.take(a_elsewhere, 2)
    quota.give(a)
    assert quota.held("c-1", "u-a") == 1
    assert quota.take(a, 2)
    for _ in range(3):
        quota.give(a)
    assert quota.held("c-1", "u-a") == 0  # never below zero, and forgotten


def test_the_default_is_a_quarter_of_what_the_agent_allows() -> None:
    assert StreamQuota(0).limit_for(4096) == 1024
    assert StreamQuota(7).limit_for(4096) == 7
    assert StreamQuota(0).limit_for(2) == 1

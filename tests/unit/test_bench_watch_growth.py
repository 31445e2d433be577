"""``bench.watch_growth``: one point per watches run, read from the bench's JSON."""

from __future__ import annotations

from typing import Any

from bench.watch_growth import points


def _run(watches: int, gateway_kib: int, agent_kib: int, p99: float) -> dict[str, Any]:
    return {
        "watches-h2": {
            "opened": watches,
            "gateway_rss_before_kib": 100_000,
            "gateway_rss_after_kib": 100_000 + gateway_kib,
            "agent_rss_before_kib": 90_000,
            "agent_rss_after_kib": 90_000 + agent_kib,
            "cpu_pct": {"gateway": 20.0, "agent": 30.0},
            "latency": {"p99_ms": p99},
            "rate": 10_000.0,
        }
    }


def test_points_are_the_growth_of_each_run_in_order_of_watches() -> None:
    got = points([_run(100_000, 350_000, 460_000, 6.0), _run(1_000, 3_600, 4_700, 2.0)])
    assert [p["watches"] for p in got] == [1_000, 100_000]
    assert got[1]["gateway_kib"] == 350_000 and got[1]["agent_kib"] == 460_000
    assert got[0]["p99_ms"] == 2.0 and got[1]["gateway_cpu"] == 20.0

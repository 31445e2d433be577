"""bench.ab's arithmetic: costs per MB or per request, and the ratio of medians."""

from __future__ import annotations

from bench.ab import Sample, line, ratio, sample
from bench.procstats import CpuUsage
from bench.wrk import WrkResult


def result(rps: float, mb_per_s: float) -> WrkResult:
    seconds = 2.0
    return WrkResult(
        requests=int(rps * seconds), bytes=int(mb_per_s * 1e6 * seconds), duration_s=seconds,
        errors=0, p50_ms=1.0, p90_ms=1.5, p99_ms=2.0, max_ms=3.0, cpu_s=0.0,
    )  # fmt: skip


def test_costs_are_per_mb_for_bulk_and_per_request_otherwise() -> None:
    usage = CpuUsage(wall_s=2.0, roles={"gateway": 1.0}, box_busy_pct=150.0, steal_pct=0.0)
    bulk = sample("tree", result(10, 500), usage, bulk=True)
    assert bulk.value == 500 and round(bulk.cost["gateway"], 3) == 1.0  # 1 s over 1,000 MB
    small = sample("tree", result(10_000, 20), usage, bulk=False)
    assert round(small.cost["gateway"], 3) == 50.0  # 1 s over 20,000 requests
    assert "µs/req" in line(0, small, bulk=False) and "MB/s" in line(0, bulk, bulk=True)


def test_ratio_of_medians() -> None:
    samples = [Sample(b, v, 0, {}) for b, v in
               [("tree", 10), ("base", 8), ("tree", 12), ("base", 10), ("tree", 11)]]  # fmt: skip
    assert ratio(samples) == 11 / 9

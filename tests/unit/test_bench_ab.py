"""bench.ab's arithmetic: costs per MB or per request, the ratio of medians, the
connection count, and what it prints (errors, the gateway's compiled or not)."""

from __future__ import annotations

import pytest

from bench.ab import Sample, connection_count, line, ratio, request_path, sample
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


def test_errors_show_in_the_line_only_when_there_are_some() -> None:
    usage = CpuUsage(wall_s=2.0, roles={"gateway": 1.0}, box_busy_pct=150.0, steal_pct=0.0)
    clean = sample("tree", result(10_000, 20), usage, bulk=False)
    assert clean.errors == 0 and "ERRORS" not in line(0, clean, bulk=False)
    failing = Sample("tree", 10.0, 0, {}, errors=3)
    assert line(0, failing, bulk=False).endswith("ERRORS 3")


def test_connections_default_to_the_scenario_and_can_be_set() -> None:
    assert connection_count(None, bulk=True) == 1
    assert connection_count(None, bulk=False) == 64
    assert connection_count(1, bulk=False) == 1
    assert connection_count(8, bulk=True) == 8
    with pytest.raises(SystemExit):
        connection_count(0, bulk=False)


def test_request_path_is_read_from_the_gateway_log() -> None:
    log = "herdgate gateway serving https://x\nrequest path: compiled (mypyc, 30 modules)\n"
    assert request_path(log) == "request path: compiled (mypyc, 30 modules)"
    assert request_path("") == "request path: not in its log"


def test_the_http2_get_defaults_to_the_suites_four_connections() -> None:
    assert connection_count(None, bulk=False, h2=True) == 4
    assert connection_count(2, bulk=False, h2=True) == 2

"""bench.h2load: reading h2load's summary (its real output format, nghttp2 1.52)."""

from __future__ import annotations

import pytest

from bench.h2load import parse

OUTPUT = """starting benchmark...
spawning thread #0: 4 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Application protocol: h2
finished in 2.00s, 6017.50 req/s, 13.02MB/s
requests: 12035 total, 12099 started, 12035 done, 12034 succeeded, 1 failed, 0 errored, 0 timeout
status codes: 12034 2xx, 0 3xx, 1 4xx, 0 5xx
traffic: 26.04MB (27305133) total, 1.15MB (1207245) headers (space savings 61.31%), 24.65MB (25848448) data
                     min         max         mean         sd        +/- sd
time for request:      861us     48.53ms     10.61ms      4.26ms    70.69%
time for connect:     5.91ms      6.98ms      6.40ms       442us    50.00%
time to 1st byte:    12.26ms     13.63ms     12.88ms       571us    75.00%
req/s           :    1490.52     1518.50     1504.37       12.05    50.00%
"""  # noqa: E501


def test_a_timed_run() -> None:
    result = parse(OUTPUT, cpu_s=0.5)
    assert result.requests == 12035
    assert result.errors == 1
    assert result.duration_s == pytest.approx(2.0)
    assert result.rps == pytest.approx(6017.5)
    assert result.bytes == 27305133
    assert result.p50_ms == pytest.approx(10.61)  # the mean: h2load gives no percentiles
    assert result.max_ms == pytest.approx(48.53)
    assert result.cpu_s == 0.5


def test_a_failed_run_is_an_error() -> None:
    failed = OUTPUT.replace("finished in 2.00s", "finished in 663us").replace(
        "12034 succeeded, 1 failed", "0 succeeded, 12035 failed"
    )
    assert parse(failed, 0.0).errors == 12035
    with pytest.raises(RuntimeError):
        parse("connect to 127.0.0.1:1 failed", 0.0, code=1)

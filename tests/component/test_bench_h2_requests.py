"""bench.h2_requests still drives both HTTP/2 servers through whole exchanges (no figures
checked: the client would fail on a malformed answer)."""

from __future__ import annotations

from bench import h2_requests


def test_both_servers_answer_a_few_requests() -> None:
    assert h2_requests.server_us_per_request(20) > 0
    assert h2_requests.gateway_us_per_request(20) > 0

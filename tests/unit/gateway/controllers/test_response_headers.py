from __future__ import annotations

from gateway.controllers.downstream import _response_headers


def test_hop_by_hop_and_framing_headers_are_dropped_every_time() -> None:
    raw = [
        (b"Content-Type", b"application/json"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"keep-alive"),
        (b"Audit-Id", b"abc"),
        (b"Content-Length", b"2"),
        (b"Warning", b"299 - a"),
        (b"Warning", b"299 - b"),
    ]
    for _ in range(2):  # the second pass is served from the name cache
        headers = _response_headers(raw)
        assert list(headers.items()) == [
            ("Content-Type", "application/json"),
            ("Audit-Id", "abc"),
            ("Warning", "299 - a"),
            ("Warning", "299 - b"),
        ]

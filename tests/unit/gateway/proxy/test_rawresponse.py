"""The one-buffer answer: what passes, what is added, and framing for every status."""

from __future__ import annotations

import httptools
import pytest

from gateway.proxy.model import switching, whole
from gateway.proxy.rawresponse import build, h2_whole, switching_head

UPSTREAM = [
    (b"Content-Type", b"application/json"),
    (b"Audit-Id", b"abc"),
    (b"Content-Length", b"999"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Connection", b"keep-alive"),
    (b"Keep-Alive", b"timeout=5"),
    (b"Date", b"Mon, 01 Jan 2001 00:00:00 GMT"),
    (b"Server", b"kube"),
    (b"X-Kubernetes-Pf-Flowschema-Uid", b"u1"),
]


class _Parsed:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def parse(data: bytes, head: bool = False) -> tuple[int, _Parsed]:
    parsed = _Parsed()
    parser = httptools.HttpResponseParser(parsed)
    parser.feed_data(data)
    # An answer to HEAD has a length but no body: the parser cannot know, headers suffice.
    assert parsed.done or head
    return parser.get_status_code(), parsed


def test_passes_api_server_headers_and_frames_the_body() -> None:
    data = build(200, "OK", UPSTREAM, b'{"a":1}', request_id="rid-1", keep_alive=True)
    status, parsed = parse(data)
    names = [n for n, _ in parsed.headers]
    assert status == 200 and parsed.body == b'{"a":1}'
    assert (b"content-type", b"application/json") in parsed.headers
    assert (b"audit-id", b"abc") in parsed.headers
    assert (b"x-kubernetes-pf-flowschema-uid", b"u1") in parsed.headers
    assert (b"content-length", b"7") in parsed.headers
    assert (b"x-request-id", b"rid-1") in parsed.headers
    for dropped in (b"transfer-encoding", b"connection", b"keep-alive", b"server"):
        assert dropped not in names
    assert names.count(b"date") == 1 and b"Mon, 01 Jan 2001" not in data
    assert names.count(b"content-length") == 1


def test_connection_close_when_the_connection_ends() -> None:
    data = build(404, "Not Found", [], b"{}", request_id="", keep_alive=False)
    status, parsed = parse(data)
    assert status == 404 and (b"connection", b"close") in parsed.headers
    assert b"x-request-id" not in [n for n, _ in parsed.headers]


def test_head_keeps_the_api_servers_length_and_sends_no_body() -> None:
    data = build(200, "OK", UPSTREAM, b"", request_id="r", keep_alive=True, head_only=True)
    assert data.endswith(b"\r\n\r\n")
    _, parsed = parse(data, head=True)
    assert (b"content-length", b"999") in parsed.headers


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    data = build(status, "", [(b"Content-Length", b"5")], b"", request_id="r", keep_alive=True)
    assert data.endswith(b"\r\n\r\n")
    assert b"content-length" not in data.lower()
    assert data.startswith(b"HTTP/1.1 %d OK\r\n" % status)  # an empty reason reads "OK"


def test_h2_head_keeps_the_api_servers_length_and_sends_no_body() -> None:
    answer = whole(200, "OK", UPSTREAM, b"", request_id="r")
    status, headers, body = h2_whole(answer, head_only=True)
    assert status == 200 and body == b""
    assert (b"content-length", b"999") in headers and (b"x-request-id", b"r") in headers
    for dropped in (b"transfer-encoding", b"connection", b"keep-alive", b"server"):
        assert dropped not in [n for n, _ in headers]


def test_a_101_is_written_as_the_api_server_gave_it() -> None:
    lines = [(b"Connection", b"Upgrade"), (b"Upgrade", b"SPDY/3.1"), (b"Content-Length", b"0")]
    head = switching_head(switching("Switching Protocols", lines, None, "rid"))  # type: ignore[arg-type]
    assert head == (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        b"X-Request-Id: rid\r\n\r\n"
    )

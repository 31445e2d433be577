"""gateway.front.h1_protocol: client requests read without I/O, every one of them (the
management API and upgrades too: nothing is handed over unread)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.front.h1_protocol import MAX_HEAD_BYTES, Body, End, Event, Head, Invalid, RequestReader

GET = (
    b"GET /k8s/clusters/c-1/api/v1/pods?limit=5 HTTP/1.1\r\nHost: gw\r\n"
    b"Authorization: Bearer t\r\nAccept: application/json\r\n\r\n"
)
POST = (
    b"POST /k8s/clusters/c-1/api/v1/namespaces HTTP/1.1\r\nHost: gw\r\n"
    b"Content-Length: 11\r\n\r\nhello world"
)
CHUNKED = (
    b"PUT /k8s/clusters/c-1/api/v1/x HTTP/1.1\r\nHost: gw\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)
LOGIN = (
    b"POST /v3-public/localProviders/local?action=login HTTP/1.1\r\nHost: gw\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)
EXEC = (
    b"GET /k8s/clusters/c-1/api/v1/namespaces/d/pods/p/exec?command=sh HTTP/1.1\r\n"
    b"Host: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
)


def _reader() -> RequestReader:
    return RequestReader()


def _summary(events: list[Event]) -> list[object]:
    """Events with Body data merged (split points must not matter)."""
    out: list[object] = []
    for event in events:
        if isinstance(event, Body):
            if out and isinstance(out[-1], bytes):
                out[-1] += event.data
            else:
                out.append(event.data)
        elif isinstance(event, Head):
            out.append((event.method, event.target, event.keep_alive, event.content_length))
        else:
            out.append(event)
    return out


def test_a_get_gives_its_head_and_end() -> None:
    events = _reader().feed(GET)
    assert len(events) == 2
    head, end = events
    assert isinstance(head, Head) and isinstance(end, End)
    assert head.method == "GET"
    assert head.target == b"/k8s/clusters/c-1/api/v1/pods?limit=5"
    assert head.version == "1.1"
    assert head.keep_alive and not head.upgrade and not head.has_body
    assert (b"Authorization", b"Bearer t") in head.headers


def test_bodies_arrive_in_pieces_and_chunked_ones_unchunked() -> None:
    reader = _reader()
    events = reader.feed(POST[:-6]) + reader.feed(POST[-6:])
    assert _summary(events)[1:] == [b"hello world", End()]
    assert _summary(_reader().feed(CHUNKED))[1:] == [b"hello world", End()]
    head = _reader().feed(CHUNKED)[0]
    assert isinstance(head, Head) and head.chunked and head.has_body


def test_pipelined_cluster_requests_are_all_read() -> None:
    events = _reader().feed(GET + POST + GET)
    assert [type(e).__name__ for e in events] == [
        "Head", "End", "Head", "Body", "End", "Head", "End",
    ]  # fmt: skip


def test_management_requests_are_read_like_any_other() -> None:
    reader = _reader()
    events = reader.feed(LOGIN[:10]) + reader.feed(LOGIN[10:])
    assert _summary(events) == [
        ("POST", b"/v3-public/localProviders/local?action=login", True, 2),
        b"{}",
        End(),
    ]
    assert reader.feed(b"GET /next") == []
    assert reader.in_head and not reader.idle


def test_a_management_request_after_cluster_requests_is_read_in_turn() -> None:
    reader = _reader()
    assert len(reader.feed(GET)) == 2
    assert reader.idle
    events = reader.feed(LOGIN)
    assert isinstance(events[0], Head) and events[0].target.startswith(b"/v3-public/")
    assert reader.idle


def test_an_upgrade_head_is_a_request_and_what_follows_is_read_as_http() -> None:
    """An upgrade head turns no check off: until the front takes the connection over,
    the bytes after it are HTTP/1.1 (read, and refused when they are not)."""
    reader = _reader()
    events = reader.feed(EXEC + GET)
    assert [type(e).__name__ for e in events] == ["Head", "End", "Head", "End"]
    head = events[0]
    assert isinstance(head, Head) and head.upgrade and head.target.endswith(b"command=sh")
    events = _reader().feed(EXEC + b"\x80\x03\x00\x01garbage")
    assert isinstance(events[-1], Invalid) and events[-1].status == 400
    split = _reader()
    events = split.feed(EXEC[:40]) + split.feed(EXEC[40:] + GET[:5]) + split.feed(GET[5:])
    assert [type(e).__name__ for e in events] == ["Head", "End", "Head", "End"]


def test_an_upgrade_with_a_body_is_refused() -> None:
    events = _reader().feed(EXEC.replace(b"Host: gw", b"Host: gw\r\nContent-Length: 3") + b"abc")
    assert isinstance(events[-1], Invalid) and events[-1].status == 400
    assert "upgrade" in events[-1].message


def test_pipelined_requests_for_the_management_api_are_read_in_order() -> None:
    events = _reader().feed(GET + LOGIN + GET)
    heads = [e.target for e in events if isinstance(e, Head)]
    assert heads == [
        b"/k8s/clusters/c-1/api/v1/pods?limit=5",
        b"/v3-public/localProviders/local?action=login",
        b"/k8s/clusters/c-1/api/v1/pods?limit=5",
    ]


def test_a_refusal_names_the_target_it_concerns() -> None:
    events = _reader().feed(b"GET /v3/users HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert isinstance(events[-1], Invalid) and events[-1].target == b"/v3/users"


def test_malformed_input_is_refused_once_and_then_ignored() -> None:
    reader = _reader()
    events = reader.feed(b"GET /k8s/clusters/c-1/ HTTP/1.1\r\nBad Header\r\n\r\n")
    assert len(events) == 1 and isinstance(events[0], Invalid) and events[0].status == 400
    assert reader.failed
    assert reader.feed(GET) == []


def test_oversized_heads_are_refused() -> None:
    reader = _reader()
    events = reader.feed(b"GET /k8s/clusters/c-1/ HTTP/1.1\r\n")
    line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    for _ in range(MAX_HEAD_BYTES // len(line) + 2):
        events += reader.feed(line)
    assert isinstance(events[-1], Invalid) and events[-1].status == 431
    many = b"GET /k8s/clusters/c-1/ HTTP/1.1\r\n" + b"X-A: 1\r\n" * 300 + b"\r\n"
    events = _reader().feed(many)
    assert isinstance(events[-1], Invalid) and events[-1].status == 431


def test_keep_alive_and_expect_follow_the_request() -> None:
    head = _reader().feed(b"GET /k8s/clusters/c-1/ HTTP/1.0\r\n\r\n")[0]
    assert isinstance(head, Head) and not head.keep_alive and head.version == "1.0"
    head = _reader().feed(GET.replace(b"Host: gw", b"Host: gw\r\nConnection: close"))[0]
    assert isinstance(head, Head) and not head.keep_alive
    expect = POST.replace(b"Host: gw", b"Host: gw\r\nExpect: 100-continue")
    head = _reader().feed(expect)[0]
    assert isinstance(head, Head) and head.expect_continue


STREAM = GET + POST + CHUNKED + GET


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=12, unique=True))
def test_split_points_do_not_change_the_requests(cuts: list[int]) -> None:
    reader = _reader()
    events: list[Event] = []
    start = 0
    for cut in [*sorted(cuts), len(STREAM)]:
        events += reader.feed(STREAM[start:cut])
        start = cut
    assert _summary(events) == _summary(_reader().feed(STREAM))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_any_bytes_give_events_or_a_refusal_never_an_exception(chunks: list[bytes]) -> None:
    reader = _reader()
    for chunk in chunks:
        for event in reader.feed(chunk):
            assert isinstance(event, Head | Body | End | Invalid)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([GET, POST, CHUNKED]), min_size=1, max_size=4),
    st.integers(min_value=1, max_value=len(LOGIN)),
)
def test_a_management_request_after_whole_ones_is_read_whole(
    requests: list[bytes], cut: int
) -> None:
    reader = _reader()
    for request in requests:
        reader.feed(request)
    events = reader.feed(LOGIN[:cut]) + reader.feed(LOGIN[cut:])
    assert _summary(events) == _summary(_reader().feed(LOGIN))


def test_what_the_proxy_asks_of_every_request_is_picked_out_while_parsing() -> None:
    request = GET.replace(
        b"Host: gw", b"Host: gw\r\nUser-Agent: kubectl/v1.32.0\r\nImpersonate-User: bob"
    )
    head = _reader().feed(request)[0]
    assert isinstance(head, Head)
    assert head.authorization == b"Bearer t"
    assert head.user_agent == b"kubectl/v1.32.0"
    assert head.impersonates
    plain = _reader().feed(POST)[0]
    assert isinstance(plain, Head)
    assert (plain.authorization, plain.user_agent, plain.impersonates) == (None, b"", False)

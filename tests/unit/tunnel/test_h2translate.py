"""HTTP/1.1 <-> HTTP/2 translation (``tunnel.h2translate``), held to outside references:
the gateway's own head writer (``gateway.proxy.heads``) on one side, the ``h2`` library's
encoder and decoder (HPACK, header validation) and llhttp's response parser on the other.
Hostile input gives ``Untranslatable`` (the relay's 502), never another exception."""

from __future__ import annotations

import httptools
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, ResponseReceived, StreamEnded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.proxy.heads import request_head
from gateway.proxy.requestinfo import request_info
from tunnel.h2translate import (
    HOP_BY_HOP,
    LAST_CHUNK,
    RequestHead,
    RequestReader,
    Untranslatable,
    bad_gateway,
    canonical_name,
    chunk,
    h1_response_head,
    h2_request_headers,
    long_running,
    unusual,
)

Header = tuple[bytes, bytes]

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
names = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=20).map(str.encode)
# A field value as HTTP/1.1 carries it: visible ASCII and inner spaces/tabs, no
# surrounding whitespace (a parser strips it), latin-1 bytes allowed.
inner = st.binary(min_size=0, max_size=30).map(
    lambda b: bytes(c for c in b if (c >= 0x20 and c != 0x7F) or c == 0x09)
)
values = inner.map(lambda v: v.strip(b" \t"))
identity_names = st.sampled_from(
    [b"Impersonate-User", b"Impersonate-Group", b"Impersonate-Uid", b"Impersonate-Extra-Scopes"]
)
fields = st.lists(
    st.tuples(st.one_of(names, identity_names), values).filter(
        lambda f: f[0].lower() not in HOP_BY_HOP | {b"host", b"te", b"content-length", b"expect"}
    ),
    max_size=20,
)
paths = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~/?=&%", max_size=40).map(
    lambda p: ("/" + p).encode()
)
methods = st.sampled_from([b"GET", b"DELETE", b"OPTIONS", b"HEAD"])


def read_all(raw: bytes, cuts: list[int]) -> list[RequestHead | bytes | None]:
    """Feed ``raw`` to a reader in pieces cut at ``cuts``."""
    reader = RequestReader()
    events: list[RequestHead | bytes | None] = []
    start = 0
    for cut in [*sorted(set(c % (len(raw) + 1) for c in cuts)), len(raw)]:
        if cut > start:
            events += reader.feed(raw[start:cut])
            start = cut
    return events


def over_h2(headers: list[Header], body: bytes = b"") -> list[Header]:
    """``headers`` sent by an h2 client (validating, normalising) and decoded by an h2
    server: what the API server receives."""
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.send_headers(1, headers, end_stream=not body)
    if body:
        client.send_data(1, body, end_stream=True)
    events = server.receive_data(client.data_to_send())
    got = [e for e in events if isinstance(e, RequestReceived)]
    assert len(got) == 1
    return [(bytes(n), bytes(v)) for n, v in got[0].headers]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=methods, path=paths, host=names, extra=fields, cuts=st.lists(st.integers(0, 4096)))
def test_a_request_head_crosses_in_order_untouched(
    method: bytes, path: bytes, host: bytes, extra: list[Header], cuts: list[int]
) -> None:
    raw = request_head(method, path, [(b"Host", host), *extra])
    events = read_all(raw, cuts)
    assert len(events) == 2 and events[1] is None
    head = events[0]
    assert isinstance(head, RequestHead)
    assert unusual(head) == ""
    sent = h2_request_headers(head)
    received = over_h2(sent)
    assert received[:4] == [
        (b":method", method),
        (b":scheme", b"https"),
        (b":authority", host),
        (b":path", path),
    ]
    # every field, in order, names lower-cased, values as written (cookies aside, which
    # HTTP/2 may split and the server joins)
    expected = [(n.lower(), v) for n, v in extra if n.lower() != b"cookie"]
    assert [f for f in received[4:] if f[0] != b"cookie"] == expected


@settings(max_examples=200, deadline=None)
@given(users=st.lists(values.filter(bool), min_size=1, max_size=4), groups=st.lists(values))
def test_identity_headers_are_not_added_lost_merged_or_reordered(
    users: list[bytes], groups: list[bytes]
) -> None:
    ident = [(b"Impersonate-User", u) for u in users] + [(b"Impersonate-Group", g) for g in groups]
    raw = request_head(b"GET", b"/api", [(b"Host", b"api:6443"), *ident])
    (head, end) = RequestReader().feed(raw)
    assert isinstance(head, RequestHead) and end is None
    received = over_h2(h2_request_headers(head))
    got = [(n, v) for n, v in received if n.startswith(b"impersonate-")]
    assert got == [(n.lower(), v) for n, v in ident]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=5))
def test_hostile_bytes_are_refused_cleanly(data: bytes, cuts: list[int]) -> None:
    """Anything at all: events the relay can send, or ``Untranslatable``."""
    for raw in (data, b"GET / HTTP/1.1\r\nHost: a\r\n" + data):
        try:
            events = read_all(raw, cuts)
            for event in events:
                if isinstance(event, RequestHead) and not unusual(event):
                    over_h2(h2_request_headers(event))
        except Untranslatable:
            pass


@pytest.mark.parametrize(
    "value",
    [b"a\rb", b"a\nb", b"a\x00b", b"a\x7fb", b"\x01"],
    ids=["CR", "LF", "NUL", "DEL", "SOH"],
)
def test_control_characters_never_reach_h2(value: bytes) -> None:
    head = RequestHead(
        b"GET", b"/api", [(b"Host", b"a"), (b"Impersonate-User", value)], False, True
    )
    with pytest.raises(Untranslatable, match="control character"):
        h2_request_headers(head)


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ([(b"Host", b"a"), (b"Host", b"b")], "two Host"),
        ([], "no Host"),
        ([(b"Host", b"a"), (b"Content-Length", b"1"), (b"Content-Length", b"2")], "Content-Length"),
        ([(b"Host", b"a"), (b"Bad Name", b"x")], "not a token"),
    ],
)
def test_ambiguous_heads_are_refused(fields: list[Header], why: str) -> None:
    with pytest.raises(Untranslatable, match=why):
        h2_request_headers(RequestHead(b"GET", b"/", fields, False, True))


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ([(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")], "an upgrade"),
        ([(b"Upgrade", b"SPDY/3.1")], "an upgrade"),
        ([(b"Connection", b"keep-alive, upgrade")], "an upgrade"),
        ([(b"Expect", b"100-continue")], "Expect"),
        ([(b"Connection", b"Impersonate-User")], "Connection naming"),
        ([(b"Transfer-Encoding", b"gzip, chunked")], "a transfer coding"),
        ([(b"Connection", b"keep-alive")], ""),
        ([(b"Connection", b"close")], ""),
    ],
)
def test_unusual_requests_keep_their_own_connection(fields: list[Header], why: str) -> None:
    got = unusual(RequestHead(b"GET", b"/x", [(b"Host", b"a"), *fields], False, True))
    assert got.startswith(why) and bool(got) == bool(why), got


def test_an_upgrade_stops_reading_and_keeps_its_bytes() -> None:
    reader = RequestReader()
    raw = b"GET /exec HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert reader.feed(raw[:20]) == []
    assert reader.feed(raw[20:] + b"\x81\x00") == []
    assert reader.stopped == "an upgrade"
    assert b"".join(reader.raw) == raw + b"\x81\x00"


def test_bodies_content_length_and_chunked_then_the_next_request() -> None:
    reader = RequestReader()
    first = reader.feed(b"PUT /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhel")
    assert isinstance(first[0], RequestHead) and first[1:] == [b"hel"]
    assert reader.feed(b"lo") == [b"lo", None]
    assert reader.between_requests
    second = reader.feed(b"POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert isinstance(second[0], RequestHead) and second[0].chunked
    assert h2_request_headers(second[0])[4:] == []  # transfer-encoding dropped
    assert reader.feed(b"3\r\nabc\r\n0\r\n\r\n") == [b"abc", None]


def test_a_head_llhttp_does_not_take_is_relayed_as_it_came() -> None:
    reader = RequestReader()
    raw = b"LIST /a HTTP/1.1\r\nHost: h\r\n\r\n"
    assert reader.feed(raw) == []
    assert reader.stopped.startswith("a head the parser does not take")
    assert b"".join(reader.raw) == raw


def test_a_pipelined_second_request_is_refused() -> None:
    with pytest.raises(Untranslatable, match="second request"):
        RequestReader().feed(
            b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n"
        )


# -- answers ---------------------------------------------------------------------------


class _Parsed:
    def __init__(self) -> None:
        self.headers: list[Header] = []
        self.body = b""
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def h2_answer(headers: list[Header], body: list[bytes]) -> tuple[list[Header], list[bytes], bool]:
    """An answer sent by an h2 server and decoded by an h2 client (validating)."""
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"),
                            (b":authority", b"a"), (b":path", b"/")], end_stream=True)  # fmt: skip
    server.receive_data(client.data_to_send())
    server.send_headers(1, headers, end_stream=not body)
    for i, piece in enumerate(body):
        server.send_data(1, piece, end_stream=i == len(body) - 1)
    events = client.receive_data(server.data_to_send())
    got: list[Header] = []
    pieces: list[bytes] = []
    ended_with_head = False
    for event in events:
        if isinstance(event, ResponseReceived):
            got = [(bytes(n), bytes(v)) for n, v in event.headers]
            ended_with_head = event.stream_ended is not None
        elif isinstance(event, DataReceived):
            pieces.append(event.data)
        elif isinstance(event, StreamEnded):
            pass
    return got, pieces, ended_with_head


response_fields = st.lists(
    st.tuples(names.map(bytes.lower), values).filter(
        lambda f: f[0] not in HOP_BY_HOP | {b"content-length", b"te"}
    ),
    max_size=15,
)


@settings(max_examples=200, deadline=None)
@given(
    status=st.sampled_from([200, 201, 204, 304, 400, 403, 404, 409, 422, 500, 503]),
    extra=response_fields,
    body=st.lists(st.binary(min_size=1, max_size=50), max_size=5),
    with_length=st.booleans(),
    head_request=st.booleans(),
)
def test_an_answer_reads_as_http1_with_the_same_fields_and_body(
    status: int, extra: list[Header], body: list[bytes], with_length: bool, head_request: bool
) -> None:
    no_body = status in (204, 304)
    if no_body:
        body = []
    headers = [(b":status", b"%d" % status), *extra]
    whole = b"".join(body)
    if with_length and not no_body:
        headers.append((b"content-length", b"%d" % len(whole)))
    got, pieces, ended = h2_answer(headers, body)
    head, framing = h1_response_head(got, head_request=head_request, ended=ended)
    # The relay takes an answer as had in full (``complete``) exactly when an HTTP/1.1
    # reader of it can: by its length, or at once without a body; a chunked one only at
    # its last chunk, which the relay writes at the stream's end.
    assert framing.complete == (framing.no_body or (not framing.chunked and not whole))
    wire = head
    if not framing.no_body:
        for piece in pieces:
            wire += chunk(piece) if framing.chunked else piece
            if not framing.chunked:
                framing.remaining -= len(piece)  # as the relay counts
        if framing.chunked:
            wire += LAST_CHUNK
    assert framing.complete == (framing.no_body or not framing.chunked)
    parsed = _Parsed()
    parser = httptools.HttpResponseParser(parsed)
    if head_request:
        parser.set_dangerous_leniencies(lenient_data_after_close=True)
    parser.feed_data(wire)
    assert parser.get_status_code() == status
    if not head_request:
        assert parsed.complete
        assert parsed.body == (b"" if no_body else whole)
    kept = [(n, v) for n, v in parsed.headers if n not in (b"Transfer-Encoding",)]
    expected = [(canonical_name(n), v) for n, v in got if not n.startswith(b":")]
    if not with_length and not no_body and not head_request and ended:
        expected.append((b"Content-Length", b"0"))
    assert kept == expected


def test_hostile_answers_are_refused() -> None:
    for headers in (
        [(b"content-type", b"x")],  # no :status
        [(b":status", b"2000")],
        [(b":status", b"200"), (b":path", b"/")],
        [(b":status", b"200"), (b"x", b"a\r\nInjected: yes")],
        [(b":status", b"200"), (b"content-length", b"1"), (b"content-length", b"2")],
        [(b":status", b"200"), (b"content-length", b"-1")],
    ):
        with pytest.raises(Untranslatable):
            h1_response_head(headers, head_request=False, ended=False)


def test_bad_gateway_is_a_complete_http1_answer() -> None:
    parsed = _Parsed()
    parser = httptools.HttpResponseParser(parsed)
    parser.feed_data(bad_gateway("no"))
    assert parser.get_status_code() == 502 and parsed.complete
    assert b'"code": 502' in parsed.body


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(st.binary(min_size=1, max_size=300), max_size=6),
    chunked=st.booleans(),
    cuts=st.lists(st.integers(0, 4000), max_size=8),
)
def test_request_bodies_arrive_whole_in_order_then_the_next_request(
    pieces: list[bytes], chunked: bool, cuts: list[int]
) -> None:
    body = b"".join(pieces)
    if chunked:
        framing = (b"Transfer-Encoding", b"chunked")
        wire = b"".join(chunk(p) for p in pieces) + LAST_CHUNK
    else:
        framing = (b"Content-Length", b"%d" % len(body))
        wire = body
    raw = request_head(b"PUT", b"/api/v1/x", [(b"Host", b"h"), framing]) + wire
    reader = RequestReader()
    events: list[RequestHead | bytes | None] = []
    start = 0
    for cut in [*sorted({c % (len(raw) + 1) for c in cuts}), len(raw)]:
        if cut > start:
            events += reader.feed(raw[start:cut])
            start = cut
    assert isinstance(events[0], RequestHead) and events[-1] is None
    assert b"".join(e for e in events[1:-1] if isinstance(e, bytes)) == body
    assert reader.between_requests
    assert reader.feed(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")[-1] is None


# -- which streams go over HTTP/2 (long_running), held to the gateway's RequestInfo ------

_SEGMENT = st.sampled_from(
    ["api", "apis", "v1", "apps", "watch", "namespaces", "default", "kube-system", "pods",
     "configmaps", "nodes", "namespaces", "web-0", "log", "status", "finalize", "exec",
     "proxy", "", "w%61tch"]
)  # fmt: skip
_PAIR = st.sampled_from(
    ["watch=1", "watch=true", "watch=TRUE", "watch=false", "watch=0", "watch", "watch=",
     "w%61tch=1", "watch=1;x", "follow=true", "follow=0", "follow", "fol+low=1",
     "resourceVersion=5", "allowWatchBookmarks=true", "limit=500", "watch=%30", "x=1&watch"]
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(
    parts=st.lists(_SEGMENT, min_size=1, max_size=8),
    pairs=st.lists(_PAIR, max_size=4),
    prefix=st.sampled_from(["/api/v1", "/apis/apps/v1", ""]),
)
def test_long_running_is_the_gateways_reading(
    parts: list[str], pairs: list[str], prefix: str
) -> None:
    """The agent sends a stream over HTTP/2 when its first request is long-running by its
    own reading of the target (``long_running``); the gateway keeps such streams apart by
    ``RequestInfo.long_running``. For a GET they agree (a disagreement would only send a
    request down the slower of two correct paths)."""
    target = prefix + "/" + "/".join(parts) + ("?" + "&".join(pairs) if pairs else "")
    head = RequestHead(b"GET", target.encode(), [(b"Host", b"x")], False, True)
    assert long_running(head) == request_info("GET", target).long_running, target


def test_only_gets_are_long_running() -> None:
    for method in (b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD"):
        head = RequestHead(method, b"/api/v1/pods?watch=1", [], False, True)
        assert not long_running(head)
    assert long_running(RequestHead(b"GET", b"/api/v1/pods?watch=1", [], False, True))


def test_a_reader_told_so_stops_at_a_short_first_request_only() -> None:
    watch = b"GET /api/v1/pods?watch=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    get = b"GET /api/v1/pods HTTP/1.1\r\nHost: x\r\n\r\n"
    reader = RequestReader(short_stop=True)
    assert reader.feed(get) == [] and reader.stopped == "not long-running"
    assert reader.raw == [get]  # relayed as it came
    reader = RequestReader(short_stop=True)
    events = reader.feed(watch)
    assert isinstance(events[0], RequestHead) and events[1] is None and not reader.stopped
    events = reader.feed(get)  # a later short request on an HTTP/2 stream stays on it
    assert isinstance(events[0], RequestHead) and events[0].target == b"/api/v1/pods"
    assert not reader.stopped
    plain = RequestReader()
    assert isinstance(plain.feed(get)[0], RequestHead) and not plain.stopped

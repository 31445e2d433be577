"""Hostile HTTP/1.1 end to end (gateway, tunnel, agent, stand-in API server): malformed
bodies must end their request and release everything it held (finding 3 of issue 15),
trailers never become header fields, and the HTTP/1.1 cases of the hostile-input suite,
each asserted on what the API server received.

The world's agent allows only ``AGENT_MAX_STREAMS`` tunnel streams, so a request that
keeps its stream shows up as other users' 503s within a few attempts.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import World, start_world, stop_world
from tests.integration.env import descriptors, rss_kib, wait_until
from tests.integration.test_hostile_requests import Answer, received

pytestmark = [pytest.mark.integration, pytest.mark.request_path]

AGENT_MAX_STREAMS = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("http1")
    w = start_world(tmp)
    try:
        w.agent.stop()
        config = tmp / "agent.yaml"
        config.write_text(f"tunnel:\n  max_streams: {AGENT_MAX_STREAMS}\n")
        w.agent = w.start_agent("--config", str(config), log_name="agent-small")
        wait_until(lambda: _get_ok(w, w.admin.token), 20, "the small agent never served")
        yield w
    finally:
        stop_world(w)


@pytest.fixture(scope="module")
def reader(world: World) -> str:
    return world.user("http1-reader", role="read-only")[1].token


@pytest.fixture(scope="module")
def member(world: World) -> str:
    return world.user("http1-member", role="cluster-member")[1].token


# a raw client that may get no answer at all


def _connect(world: World) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", world.gateway.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _read_answer(sock: ssl.SSLSocket) -> Answer | None:
    """One answer, or None if the gateway closed without one."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(match.group(1)) if match else None
    while length is None or len(body) < length:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionError, ssl.SSLError):
            break
        if not chunk:
            break
        body += chunk
    return Answer(status, head, body if length is None else body[:length])


def exchange(world: World, data: bytes, wait_s: float = 5.0) -> Answer | None:
    """Send ``data`` on a new connection; the answer (None: closed without one).
    Raises TimeoutError when the gateway neither answers nor closes."""
    with _connect(world) as sock:
        sock.settimeout(wait_s)
        sock.sendall(data)
        return _read_answer(sock)


def _target(world: World, rest: str = "api/v1/namespaces/default/pods") -> str:
    return f"/k8s/clusters/{world.cluster_id}/{rest}"


def head(world: World, token: str, *lines: str, method: str = "GET", target: str = "") -> bytes:
    probe = uuid.uuid4().hex
    text = [
        f"{method} {target or _target(world)} HTTP/1.1",
        f"Host: 127.0.0.1:{world.gateway.port}",
        f"Authorization: Bearer {token}",
        f"X-Probe: {probe}",
        *lines,
    ]
    return ("\r\n".join(text) + "\r\n\r\n").encode("latin-1")


def probe_of(data: bytes) -> str:
    match = re.search(rb"X-Probe: ([0-9a-f]+)", data)
    assert match
    return match.group(1).decode()


def _get_ok(world: World, token: str) -> bool:
    try:
        answer = exchange(world, head(world, token, "Connection: close"), 10)
    except OSError:
        return False
    return answer is not None and answer.status == 200


def assert_status(answer: Answer | None, code: int) -> None:
    assert answer is not None, "closed without an answer"
    assert answer.status == code, answer
    body = answer.json()
    assert body["kind"] == "Status" and body["code"] == code, body


# what a request leaves behind


def _socket_states(pid: int) -> Counter[str]:
    """TCP states of the sockets process ``pid`` holds (CLOSE_WAIT: the peer closed,
    the process did not)."""
    inodes: set[str] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    names = {"01": "ESTABLISHED", "08": "CLOSE_WAIT", "0A": "LISTEN"}
    states: Counter[str] = Counter()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                states[names.get(fields[3], fields[3])] += 1
    return states


def _streams_open(world: World) -> float:
    """Open tunnel streams, the pool's idle keep-alive ones included."""
    text = _metrics(world)
    match = re.search(r"(?m)^herdgate_tunnel_streams_open (\S+)", text)
    assert match, text[:500]
    return float(match.group(1))


def _metrics(world: World) -> str:
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    req = urllib.request.Request(
        world.gateway.url + "/metrics", headers={"Authorization": f"Bearer {world.admin.token}"}
    )
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return str(r.read().decode())


def assert_released(world: World, streams_before: float) -> None:
    """No tunnel stream beyond those open before (idle in the pool) and no half-closed
    socket is left in the gateway or the agent."""
    assert world.gateway.process is not None and world.agent.process is not None
    gateway, agent = world.gateway.process.pid, world.agent.process.pid
    wait_until(
        lambda: _socket_states(gateway)["CLOSE_WAIT"] == 0,
        5,
        f"gateway holds CLOSE_WAIT sockets: {_socket_states(gateway)}",
    )
    wait_until(
        lambda: _socket_states(agent)["CLOSE_WAIT"] == 0,
        5,
        f"agent holds CLOSE_WAIT sockets: {_socket_states(agent)}",
    )
    wait_until(
        lambda: _streams_open(world) <= streams_before,
        5,
        f"tunnel streams still open: {_streams_open(world)} (before: {streams_before})",
    )


RSS_GROWTH_LIMIT_KIB = 16 * 1024
"""What rounds of hostile requests may add to the gateway's memory (the allocator keeps
freed heap; a leak per request or per upgrade shows as far more)."""


def resources(world: World) -> tuple[int, float, int]:
    """The gateway's descriptors, open tunnel streams and RSS (KiB) now."""
    assert world.gateway.process is not None
    pid = world.gateway.process.pid
    return len(descriptors(pid)), _streams_open(world), rss_kib(pid)


def assert_given_back(world: World, before: tuple[int, float, int]) -> None:
    """After rounds of hostile requests: no half-closed socket, tunnel stream or
    descriptor beyond those held before (a pooled connection or two may come and go), and
    the gateway's memory within ``RSS_GROWTH_LIMIT_KIB``."""
    fds, streams, rss = before
    assert_released(world, streams)
    assert world.gateway.process is not None
    pid = world.gateway.process.pid
    wait_until(
        lambda: len(descriptors(pid)) <= fds + 2,
        20,
        f"gateway descriptors not given back: {fds} before, now {descriptors(pid)}",
    )
    assert rss_kib(pid) - rss < RSS_GROWTH_LIMIT_KIB


# finding 3: a malformed body ends its request and releases what it held

BAD_BODIES = {
    "chunk-size overflow": (["Transfer-Encoding: chunked"], b"FFFFFFFFFFFFFFFFF1\r\n"),
    "chunk size not hex": (["Transfer-Encoding: chunked"], b"xchunked\r\n"),
    "chunk without its CRLF": (["Transfer-Encoding: chunked"], b"5\r\nhelloXX0\r\n\r\n"),
    "chunk-size after a good chunk": (["Transfer-Encoding: chunked"], b"2\r\nok\r\nzz\r\n"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_a_malformed_body_is_answered_and_releases_its_stream(
    world: World, reader: str, member: str, case: str
) -> None:
    lines, body = BAD_BODIES[case]
    before = _streams_open(world)
    data = head(world, reader, *lines)
    with _connect(world) as sock:
        sock.settimeout(5)
        sock.sendall(data)
        time.sleep(0.2)  # the head alone first: the request is in flight
        sock.sendall(body)
        answer = _read_answer(sock)
        assert_status(answer, 400)
        assert sock.recv(100) == b""  # and the connection is closed
    assert received(world, probe_of(data)) == []  # never answered by the API server
    assert_released(world, before)
    assert _get_ok(world, member)


def test_a_client_that_leaves_mid_body_releases_its_stream(world: World, reader: str) -> None:
    before = _streams_open(world)
    with _connect(world) as sock:
        sock.sendall(head(world, reader, "Transfer-Encoding: chunked") + b"5\r\nhel")
        time.sleep(0.3)
    assert_released(world, before)


def test_a_read_only_user_cannot_use_up_the_tunnel_streams(
    world: World, reader: str, member: str
) -> None:
    """Three times as many malformed bodies as the agent has streams, each connection
    left open: another user is still served, and everything is released."""
    before = _streams_open(world)
    held: list[ssl.SSLSocket] = []
    try:
        for _ in range(3 * AGENT_MAX_STREAMS):
            sock = _connect(world)
            held.append(sock)
            sock.settimeout(5)
            sock.sendall(head(world, reader, "Transfer-Encoding: chunked"))
            time.sleep(0.05)
            sock.sendall(b"FFFFFFFFFFFFFFFFF1\r\n")
        for sock in held:
            assert_status(_read_answer(sock), 400)
        assert _get_ok(world, member)
    finally:
        for sock in held:
            sock.close()
    assert_released(world, before)


# trailers never become header fields


def test_trailers_never_reach_the_api_server(world: World, member: str) -> None:
    before = _streams_open(world)
    admin = world.admin.token
    world.grant_downstream("trailer-victim")  # so the impersonated request is served
    data = head(
        world,
        admin,
        "Impersonate-User: trailer-victim",
        "Transfer-Encoding: chunked",
        "Connection: close",
    )
    body = b"2\r\n{}\r\n0\r\nImpersonate-Group: system:masters\r\nX-Trailer-Seen: yes\r\n\r\n"
    answer = exchange(world, data + body)
    assert answer is not None and answer.status == 200, answer
    (event,) = received(world, probe_of(data))
    if True:
        names = {str(n).lower() for n, _ in event.get("requestHeaders", [])}
        assert "impersonate-group" not in names, event
        assert "x-trailer-seen" not in names, event
        assert "system:masters" not in event["impersonatedUser"].get("groups", []), event
    # a read-only user's trailers, sent after the head and with the body
    data = head(world, member, "Transfer-Encoding: chunked", "Connection: close")
    answer = exchange(
        world, data + b"0\r\nImpersonate-User: admin\r\nImpersonate-Group: system:masters\r\n\r\n"
    )
    assert answer is not None and answer.status == 200, answer
    (event,) = received(world, probe_of(data))
    impersonated = event["impersonatedUser"]
    assert impersonated["username"] != "admin", event  # the gateway's own Impersonate-User
    assert "system:masters" not in impersonated.get("groups", []), event
    # another user's credential as a trailer is not a second Authorization field
    data = head(world, member, "Transfer-Encoding: chunked", "Connection: close")
    answer = exchange(world, data + f"0\r\nAuthorization: Bearer {admin}\r\n\r\n".encode())
    assert answer is not None and answer.status == 200, answer
    (event,) = received(world, probe_of(data))
    assert event["impersonatedUser"]["username"] == impersonated["username"], event
    assert_released(world, before)


# the HTTP/1.1 cases of the hostile-input suite: each refused before the API server

HOSTILE_HEADS = {
    "Content-Length with Transfer-Encoding": (
        ["Content-Length: 5", "Transfer-Encoding: chunked"],
        b"0\r\n\r\n",
        400,
    ),
    "two Content-Lengths": (["Content-Length: 0", "Content-Length: 5"], b"hello", 400),
    "Transfer-Encoding: chunked, identity": (
        ["Transfer-Encoding: chunked, identity"],
        b"0\r\n\r\n",
        400,
    ),
    "Transfer-Encoding: gzip, chunked": (["Transfer-Encoding: gzip, chunked"], b"0\r\n\r\n", 501),
    "bare CR in a field": (["X-A: a\rImpersonate-User: admin"], b"", 400),
    "bare LF in a field line": (["X-A: a\nImpersonate-User: admin"], b"", 400),
    "obs-fold": (["X-A: a", " Impersonate-User: admin"], b"", 400),
    "NUL in a field": (["X-A: a\x00b"], b"", 400),
    "10,000 header fields": ([f"X-H{i}: v" for i in range(10_000)], b"", 431),
    "a 70 KiB field": ([f"X-Big: {'a' * 70 * 1024}"], b"", 431),
    "a body over max_request_body": (["Content-Length: 999999999999"], b"", 413),
    "two Host fields": (["Host: evil.example"], b"", 400),
}


@pytest.mark.parametrize("case", list(HOSTILE_HEADS))
def test_hostile_http1_requests_are_refused_before_the_api_server(
    world: World, member: str, case: str
) -> None:
    lines, body, status = HOSTILE_HEADS[case]
    data = head(world, member, *lines, "Connection: close")
    answer = exchange(world, data + body)
    assert_status(answer, status)
    assert received(world, probe_of(data)) == []
    assert _get_ok(world, member)


def _raw_head(world: World, token: str, request_line: str, *lines: str) -> bytes:
    text = [request_line, f"Authorization: Bearer {token}", *lines, "Connection: close"]
    return ("\r\n".join(text) + "\r\n\r\n").encode("latin-1")


@pytest.mark.parametrize(
    "form", ["absolute", "asterisk", "authority", "long request line", "no Host"]
)
def test_request_targets_that_are_not_a_path_are_refused(
    world: World, member: str, form: str
) -> None:
    host = f"127.0.0.1:{world.gateway.port}"
    path = _target(world)
    line, status = {
        "absolute": (f"GET https://{host}{path} HTTP/1.1", 400),
        "asterisk": ("OPTIONS * HTTP/1.1", 400),
        "authority": (f"CONNECT {host} HTTP/1.1", 400),
        "long request line": (f"GET {path}?x={'a' * 70 * 1024} HTTP/1.1", 431),
        "no Host": (f"GET {path} HTTP/1.1", 400),
    }[form]
    probe = uuid.uuid4().hex
    lines = [f"X-Probe: {probe}"] + ([] if form == "no Host" else [f"Host: {host}"])
    answer = exchange(world, _raw_head(world, member, line, *lines))
    assert_status(answer, status)
    assert received(world, probe) == []


@pytest.mark.parametrize("upgrade", ["websocket", "h2c"])
def test_an_upgrade_outside_exec_attach_portforward_is_not_forwarded(
    world: World, member: str, upgrade: str
) -> None:
    data = head(world, member, "Connection: Upgrade", f"Upgrade: {upgrade}")
    answer = exchange(world, data)
    assert answer is not None and answer.status in (400, 501), answer
    assert answer.status != 101
    for event in received(world, probe_of(data)):
        names = {str(n).lower() for n, _ in event.get("requestHeaders", [])}
        assert "upgrade" not in names, event


def test_pipelined_requests_are_answered_in_order_each_as_its_user(
    world: World, member: str, reader: str
) -> None:
    first = head(world, member)
    second = head(world, reader, "Connection: close")
    with _connect(world) as sock:
        sock.settimeout(10)
        sock.sendall(first + second)
        one, two = _read_answer(sock), _read_answer(sock)
    assert one is not None and one.status == 200, one
    assert two is not None and two.status == 200, two
    (a,) = received(world, probe_of(first))
    (b,) = received(world, probe_of(second))
    assert a["impersonatedUser"]["username"] != b["impersonatedUser"]["username"]


# the same on a connection that served the management API first (aiohttp through the bridge)


def _after_handoff(world: World, token: str, data: bytes) -> Answer | None:
    first = (
        f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{world.gateway.port}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    with _connect(world) as sock:
        sock.settimeout(10)
        sock.sendall(first)
        answer = _read_answer(sock)
        assert answer is not None and answer.status == 200, answer
        sock.sendall(data)
        return _read_answer(sock)


def test_trailers_never_reach_the_api_server_after_a_handoff(world: World, member: str) -> None:
    data = head(world, member, "Transfer-Encoding: chunked", "Connection: close")
    answer = _after_handoff(
        world, member, data + b"0\r\nImpersonate-Group: system:masters\r\nX-Trailer-Seen: 1\r\n\r\n"
    )
    assert answer is not None and answer.status == 200, answer
    (event,) = received(world, probe_of(data))
    names = {str(n).lower() for n, _ in event.get("requestHeaders", [])}
    assert "x-trailer-seen" not in names, event
    assert "system:masters" not in event["impersonatedUser"].get("groups", []), event


_HANDOFF_CASES = {
    # case: (request line, extra header lines, expected status)
    "absolute": ("GET https://{host}{path} HTTP/1.1", ["Host: {host}"], 400),
    "no Host": ("GET {path} HTTP/1.1", [], 400),
    "two Host": ("GET {path} HTTP/1.1", ["Host: {host}", "Host: {host}"], 400),
    "no Host on v3": ("GET /v3/users HTTP/1.1", [], 400),
    "two Host on v3": ("GET /v3/users HTTP/1.1", ["Host: {host}", "Host: a.example"], 400),
    "70 KiB head on v3": (
        "GET /v3/users HTTP/1.1",
        ["Host: {host}", "X-Pad: " + "a" * 70 * 1024],
        431,
    ),
    "huge body on v3": (
        "POST /v3/tokens HTTP/1.1",
        ["Host: {host}", f"Content-Length: {10**12}"],
        413,
    ),
}


@pytest.mark.parametrize("case", list(_HANDOFF_CASES))
def test_hostile_heads_after_a_handoff_get_an_error(world: World, member: str, case: str) -> None:
    """After a request served by aiohttp, a refused head is refused by the front
    (``gateway.front.connection``: a v3 error, the connection closed), never by aiohttp's
    plain-text 400 nor forwarded."""
    host = f"127.0.0.1:{world.gateway.port}"
    path = _target(world)
    probe = uuid.uuid4().hex
    line, extra, status = _HANDOFF_CASES[case]
    lines = [x.format(host=host, path=path) for x in extra]
    data = _raw_head(world, member, line.format(host=host, path=path), f"X-Probe: {probe}", *lines)
    answer = _after_handoff(world, member, data)
    assert answer is not None and answer.status == status, answer
    body = answer.json()
    assert body["type"] == "error" and body["status"] == status, body
    assert re.search(rb"(?im)^connection: close", answer.head), answer.head
    assert received(world, probe) == []


def test_a_keep_alive_connection_on_aiohttp_serves_several_requests(
    world: World, member: str
) -> None:
    """A GET, a chunked POST (through the bridge to aiohttp) and a cluster request on one
    keep-alive connection are each answered."""
    host = f"127.0.0.1:{world.gateway.port}"
    auth = f"Authorization: Bearer {member}"
    with _connect(world) as sock:
        sock.settimeout(10)
        for _ in range(2):
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            answer = _read_answer(sock)
            assert answer is not None and answer.status == 200, answer
        body = b'{"ttl": 60000, "description": "relay"}'
        sock.sendall(
            f"POST /v3/tokens HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + f"{len(body[:10]):x}\r\n".encode()
            + body[:10]
            + f"\r\n{len(body[10:]):x}\r\n".encode()
            + body[10:]
            + b"\r\n0\r\n\r\n"
        )
        answer = _read_answer(sock)
        assert answer is not None and answer.status == 201, answer
        assert answer.json()["token"], answer
        data = head(world, member)
        sock.sendall(data)
        answer = _read_answer(sock)
        assert answer is not None and answer.status == 200, answer
    assert len(received(world, probe_of(data))) == 1


# an upgrade: bytes before and right behind the 101 never become requests of their own


@pytest.fixture(scope="module")
def owner(world: World) -> tuple[str, str]:
    """A user who may exec (``cluster-owner``), and a pod to exec in."""
    user_id, api = world.user("http1-owner", role="cluster-owner")
    world.pod(api, "http1-exec")
    return user_id, api.token


def _smuggled(world: World, token: str) -> bytes:
    """A whole request that asks the API server to act as ``system:masters``."""
    return head(
        world,
        token,
        "Impersonate-User: admin",
        "Impersonate-Group: system:masters",
        method="DELETE",
        target=_target(world, "api/v1/namespaces/default/pods/http1-exec"),
    )


@pytest.mark.parametrize("read_first", [False, True], ids=["fresh", "after-another-users-read"])
def test_requests_around_an_exec_upgrade_reach_nothing_and_leave_nothing_behind(
    world: World, owner: tuple[str, str], member: str, read_first: bool
) -> None:
    """An exec upgrade followed, in the same write, by a whole request that asks for
    ``system:masters`` (read before the 101: dropped, never passed on), and after the
    101 by another (the upgrade's bytes now: the API server's exec stream gets them, no
    HTTP request is made of them). Repeated, so that whatever the take-over of the
    connection holds would pile up: the API server saw each exec once, as the owner,
    and nothing else; descriptors, tunnel streams and memory come back.

    ``read_first``: just before each exec, another user's read leaves its kept-alive
    connection to the API server idle, and the upgrade goes on it (``StreamPool``): the
    exec is still the owner's alone, nothing of the earlier caller carries over."""
    user_id, token = owner
    reads: list[str] = []
    before_events = len(world.standin.audit_events())
    exec_target = _target(
        world, "api/v1/namespaces/default/pods/http1-exec/exec?command=id&stdout=true"
    )
    before = resources(world)
    probes: list[tuple[str, str, str]] = []
    for _ in range(20):
        upgrade = head(
            world,
            token,
            "Connection: Upgrade",
            "Upgrade: SPDY/3.1",
            "X-Stream-Protocol-Version: v4.channel.k8s.io",
            method="POST",
            target=exec_target,
        )
        pipelined, behind = _smuggled(world, token), _smuggled(world, token)
        probes.append((probe_of(upgrade), probe_of(pipelined), probe_of(behind)))
        if read_first:
            read = head(world, member)
            reads.append(probe_of(read))
            with _connect(world) as sock:
                sock.sendall(read)
                answer_of_read = _read_answer(sock)
                assert answer_of_read is not None and answer_of_read.status == 200
        with _connect(world) as sock:
            sock.settimeout(10)
            sock.sendall(upgrade + pipelined)
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 101 "), answer[:300]
            sock.sendall(behind)
            time.sleep(0.05)
    for exec_probe, pipelined_probe, behind_probe in probes:
        wait_until(lambda p=exec_probe: len(received(world, p)) == 1, 10, "no exec seen")
        (event,) = received(world, exec_probe)
        assert event["impersonatedUser"]["username"] == user_id, event
        assert received(world, pipelined_probe) == [] and received(world, behind_probe) == []
    for read_probe in reads:
        (event,) = received(world, read_probe)
        assert event["impersonatedUser"]["username"] != user_id, event
    for event in world.standin.audit_events()[before_events:]:
        assert event["verb"] != "delete", event
        assert "system:masters" not in event.get("impersonatedUser", {}).get("groups", []), event
        assert event.get("impersonatedUser", {}).get("username") != "admin", event
    assert_given_back(world, before)

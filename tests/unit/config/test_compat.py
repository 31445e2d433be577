"""config.compat: every use of a dependency's private internals is checked once, and when
the check fails the optimisation is off, with one WARNING, instead of a crash.

Each test breaks one private thing the way an upgrade could (the attribute gone, renamed
or behaving otherwise), checks it again and asserts on the WARNING and on what runs
instead. The real checks must pass on the versions installed (pinned in pyproject.toml).
"""

from __future__ import annotations

import _ssl
import asyncio
import contextlib
import logging
import os
import socket
import ssl
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp._websocket.helpers
import pytest
from aiohttp import web, web_protocol
from hypothesis import given, settings
from hypothesis import strategies as st

from config import compat
from config.compat import Assumption, Broken, aiohttp_internals, ssl_internals
from config.tls import client_context, server_context
from gateway.front.connection import Front
from gateway.identity.providers import ldap3_compat
from gateway.proxy.model import Answer, switching
from gateway.telemetry.drain import DRAIN, Drain
from tests.fakes import TestPKI
from tunnel import websocket, wsconn

WARNING_PREFIX = "dependency check "


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage().startswith(WARNING_PREFIX)
    ]


@pytest.fixture
def recheck() -> Iterator[Callable[[Assumption], bool]]:
    """``recheck(a)``: forget ``a``'s answer and check it again (the test has broken
    something); every assumption touched is forgotten again after the test, so the next
    use checks it afresh (with what the test broke mended)."""
    touched: list[Assumption] = []

    def run(assumption: Assumption) -> bool:
        touched.append(assumption)
        assumption.reset()
        return assumption.holds()

    yield run
    for assumption in touched:
        assumption.reset()


# the mechanism


def test_a_failed_probe_gives_one_warning_and_is_asked_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = []

    def probe() -> None:
        calls.append(1)
        raise Broken("not as expected")

    assumption = Assumption("test-probe", "something private", "a slower way runs", probe)
    try:
        with caplog.at_level(logging.WARNING, logger="config.compat"):
            assert not assumption.holds()
            assert not assumption.holds()
            assert compat.self_test("test", [assumption]) == [assumption]
        assert calls == [1]
        assert warnings_of(caplog) == [
            "dependency check test-probe failed: something private is not as tested "
            "(Broken: not as expected); a slower way runs"
        ]
        assert assumption.failure == "Broken: not as expected"
    finally:
        compat.REGISTRY.remove(assumption)


def test_any_exception_from_a_probe_is_a_failure_not_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def probe() -> None:
        raise AttributeError("'X' object has no attribute '_y'")

    assumption = Assumption("test-attribute", "X._y", "no X._y", probe)
    try:
        assert not assumption.evaluate()  # silent
        assert warnings_of(caplog) == []
        assert not assumption.holds()
        assert len(warnings_of(caplog)) == 1
    finally:
        compat.REGISTRY.remove(assumption)


def test_every_check_holds_on_the_installed_versions(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert compat.self_test(compat.GATEWAY) == []
        assert compat.self_test(compat.AGENT) == []
        assert ldap3_compat.AVAILABILITY.holds()
    assert warnings_of(caplog) == []
    names = {a.name for a in compat.REGISTRY}
    assert {
        "ssl-socket-direct",
        "ssl-object-direct",
        "openssl-read-ahead",
        "openssl-has-pending",
        "openssl-session-ref",
        "websocket-mask",
        "ldap3-availability",
    } <= names
    agent = {a.name for a in compat.REGISTRY if compat.AGENT in a.programs}
    assert agent == {
        "ssl-socket-direct",
        "ssl-object-direct",
        "openssl-read-ahead",
        "openssl-has-pending",
        "openssl-session-ref",
        "websocket-mask",
    }


# CPython's ssl and OpenSSL


def hide_sslobj(monkeypatch: pytest.MonkeyPatch, cls: type[Any]) -> None:
    """As if CPython had renamed ``_sslobj``: only the ssl module itself still sees it."""
    base = cls.__getattribute__

    def __getattribute__(self: Any, name: str) -> Any:
        if name == "_sslobj":
            caller: FrameType | None = sys._getframe(1)
            if caller is None or caller.f_globals.get("__name__") != "ssl":
                raise AttributeError(name)
        return base(self, name)

    monkeypatch.setattr(cls, "__getattribute__", __getattribute__)


def test_without_sslsocket_sslobj_the_socket_methods_are_used(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    recheck: Callable[[Assumption], bool],
) -> None:
    hide_sslobj(monkeypatch, ssl.SSLSocket)
    assert not recheck(ssl_internals.SOCKET_DIRECT)
    assert warnings_of(caplog) == [
        "dependency check ssl-socket-direct failed: ssl.SSLSocket._sslobj (CPython's C "
        "object under the socket) is not as tested (Broken: no _sslobj); TLS connections "
        "use the public SSLSocket methods (slower)"
    ]
    ours, theirs = socket.socketpair()
    with theirs:
        sock = ssl_internals._bare_client_context().wrap_socket(ours, do_handshake_on_connect=False)
        with sock:
            assert ssl_internals.direct(sock) is sock
    # (tests/component/test_tls_fallback.py runs TLS connections this way)


def test_with_it_the_transport_gets_the_c_object() -> None:
    ours, theirs = socket.socketpair()
    with theirs:
        sock = ssl_internals._bare_client_context().wrap_socket(ours, do_handshake_on_connect=False)
        with sock:
            inner = ssl_internals.direct(sock)
            assert inner is sock._sslobj  # type: ignore[attr-defined]
            assert type(inner.read).__name__ == "builtin_function_or_method"


def pump(src: ssl.MemoryBIO, dst: ssl.MemoryBIO) -> None:
    data = src.read()
    if data:
        dst.write(data)


def test_without_sslobject_sslobj_contexts_keep_the_standard_object(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    recheck: Callable[[Assumption], bool],
    tmp_path: Path,
) -> None:
    hide_sslobj(monkeypatch, ssl.SSLObject)
    assert not recheck(ssl_internals.OBJECT_DIRECT)
    assert len(warnings_of(caplog)) == 1
    assert "ssl-object-direct" in warnings_of(caplog)[0]
    pki = TestPKI.create(tmp_path)
    server_ctx = server_context(pki.cert_file, pki.key_file)
    client_ctx = client_context(ca_file=str(pki.ca_file))
    assert server_ctx.sslobject_class is ssl.SSLObject
    assert client_ctx.sslobject_class is ssl.SSLObject
    bios = [ssl.MemoryBIO() for _ in range(4)]  # client in/out, server in/out
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname="127.0.0.1")
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    for _ in range(10):  # the handshake, pumped by hand
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        pump(bios[1], bios[2])
        pump(bios[3], bios[0])
    payload = os.urandom(50_000)
    assert client.write(payload) == len(payload)
    pump(bios[1], bios[2])
    got = bytearray()
    while len(got) < len(payload):
        got += server.read(len(payload) - len(got))
    assert got == payload
    assert len(warnings_of(caplog)) == 1  # two contexts, still one line


@pytest.fixture(params=["untested CPython", "libssl not found"])
def no_libssl_access(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No pointer into CPython's ssl objects: an unchecked CPython, or no libssl found."""
    if request.param == "untested CPython":
        monkeypatch.setattr(ssl_internals, "LAYOUT_CHECKED", ())
    else:
        monkeypatch.setattr(ssl_internals, "_lib", [])
        monkeypatch.setattr(_ssl, "__file__", str(tmp_path / "no-such-_ssl.so"))


@pytest.mark.usefixtures("no_libssl_access")
def test_without_the_ssl_ctx_pointer_there_is_no_read_ahead(
    caplog: pytest.LogCaptureFixture, recheck: Callable[[Assumption], bool], tmp_path: Path
) -> None:
    assert not recheck(ssl_internals.READ_AHEAD)
    pki = TestPKI.create(tmp_path)
    assert not ssl_internals.enable_read_ahead(pki.server_context())
    assert not ssl_internals.enable_read_ahead(client_context(ca_file=str(pki.ca_file)))
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "openssl-read-ahead" in messages[0], messages
    assert messages[0].endswith("TLS reads without read-ahead (two recv calls per record)")


def test_a_context_whose_pointer_does_not_match_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pki = TestPKI.create(tmp_path)
    context = pki.server_context()
    assert ssl_internals._ssl_ctx(context) is not None
    # The pointer read is checked against the context's own options and verify mode.
    monkeypatch.setattr(ssl_internals, "_VERIFY_MODES", {})
    assert ssl_internals._ssl_ctx(context) is None


def test_a_sockets_ssl_pointer_is_checked_against_its_descriptor_and_context() -> None:
    ours, theirs = socket.socketpair()
    other_ours, other_theirs = socket.socketpair()
    with theirs, other_ours, other_theirs:
        sock = ssl_internals._bare_client_context().wrap_socket(ours, do_handshake_on_connect=False)
        with sock:
            inner = sock._sslobj  # type: ignore[attr-defined]
            pointer = ssl_internals._ssl_of(sock, inner)
            assert pointer is not None
            check = ssl_internals.pending_check(sock, inner)
            assert check is not None and check() == 0  # nothing read: nothing held

            # OpenSSL must name this socket's descriptor and context for the pointer.
            class Elsewhere:
                context = sock.context

                def fileno(self) -> int:
                    return other_ours.fileno()

            assert ssl_internals._ssl_of(Elsewhere(), inner) is None  # type: ignore[arg-type]
            other_context = ssl_internals._bare_client_context()

            class OtherContext:
                context = other_context

                def fileno(self) -> int:
                    return sock.fileno()

            assert ssl_internals._ssl_of(OtherContext(), inner) is None  # type: ignore[arg-type]
            assert ssl_internals._ssl_of(sock, sock) is None  # not the C object


@pytest.mark.usefixtures("no_libssl_access")
def test_without_the_ssl_pointer_reads_go_on_until_openssl_wants_more(
    caplog: pytest.LogCaptureFixture, recheck: Callable[[Assumption], bool]
) -> None:
    assert not recheck(ssl_internals.HAS_PENDING)
    ours, theirs = socket.socketpair()
    with theirs:
        sock = ssl_internals._bare_client_context().wrap_socket(ours, do_handshake_on_connect=False)
        with sock:
            assert ssl_internals.pending_check(sock, sock._sslobj) is None  # type: ignore[attr-defined]
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "openssl-has-pending" in messages[0], messages
    # (tests/component/test_tls_fallback.py runs TLS connections this way)


def test_a_session_reference_is_released_once_and_a_fresh_connection_has_none() -> None:
    lib = ssl_internals._libssl()
    ours, theirs = socket.socketpair()
    with theirs:
        sock = ssl_internals._bare_client_context().wrap_socket(ours, do_handshake_on_connect=False)
        with sock:
            inner = sock._sslobj  # type: ignore[attr-defined]
            assert ssl_internals.session_of(sock, inner) is None  # no handshake: none
            pointer = ssl_internals._ssl_of(sock, inner)
            assert pointer is not None
            held = ssl_internals.SessionRef(lib.SSL_SESSION_new(), sock.context)
            ssl_internals.resume(sock, inner, held)  # offered (an empty session: no ticket)
            assert held.released
            held.release()  # once only
            back = lib.SSL_get1_session(pointer)
            assert back  # the connection holds its own reference
            lib.SSL_SESSION_free(back)


@pytest.mark.usefixtures("no_libssl_access")
def test_without_the_ssl_pointer_sessions_are_cpythons_copies(
    caplog: pytest.LogCaptureFixture, recheck: Callable[[Assumption], bool]
) -> None:
    assert not recheck(ssl_internals.SESSION_REF)
    ours, theirs = socket.socketpair()
    with theirs:
        sock = ssl_internals._bare_client_context().wrap_socket(ours, do_handshake_on_connect=False)
        with sock:
            assert ssl_internals.session_of(sock, sock._sslobj) is None  # type: ignore[attr-defined]
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "openssl-session-ref" in messages[0], messages


# aiohttp


def reference_mask(mask: bytes, data: bytes) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=4, max_size=4), st.binary(max_size=2000))
def test_the_python_mask_is_rfc_6455s_and_aiohttps(mask: bytes, payload: bytes) -> None:
    ours = bytearray(payload)
    websocket.mask_pure(mask, ours)
    assert bytes(ours) == reference_mask(mask, payload)
    theirs = bytearray(payload)
    aiohttp._websocket.helpers.websocket_mask(mask, theirs)
    assert ours == theirs
    websocket.mask_pure(mask, ours)  # masking twice gives the payload back
    assert ours == payload


@pytest.mark.parametrize("how", ["gone", "wrong"])
def test_without_aiohttps_mask_the_python_mask_runs(
    how: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    recheck: Callable[[Assumption], bool],
) -> None:
    assert aiohttp_internals.websocket_mask is aiohttp._websocket.helpers.websocket_mask
    assert wsconn.MASK_IN_PLACE is aiohttp._websocket.helpers.websocket_mask
    if how == "gone":
        monkeypatch.delattr(aiohttp._websocket.helpers, "websocket_mask")
    else:
        monkeypatch.setattr(aiohttp._websocket.helpers, "websocket_mask", lambda m, d: None)
    assert not recheck(aiohttp_internals.MASK)
    assert aiohttp_internals._choose_mask() is None  # tunnel.wsconn then uses mask_pure
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "websocket-mask" in messages[0], messages


def test_the_gateway_relies_on_no_internals_of_aiohttps_server() -> None:
    """``set_parser`` (exec, attach and port-forward were refused with 501 without it)
    and ``Server.connection_lost`` (the wait at exit) are no assumptions any more: the
    front owns every client connection (tests/unit/gateway/front/test_front.py)."""
    compat._modules()
    names = {a.name for a in compat.REGISTRY if compat.GATEWAY in a.programs}
    assert "aiohttp-set-parser" not in names and "aiohttp-connection-lost" not in names
    assert "websocket-mask" in names


async def test_without_set_parser_and_connection_lost_the_front_still_upgrades_and_bridges(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(web_protocol.RequestHandler, "set_parser")
    original = web.Server.connection_lost

    def connection_lost(self: Any, protocol: Any, error: BaseException | None = None) -> None:
        original(self, protocol, error)  # renamed parameters: a changed interface

    monkeypatch.setattr(web.Server, "connection_lost", connection_lost)
    assert compat.self_test(compat.GATEWAY, list(_aiohttp_assumptions())) == []

    class Joined(asyncio.Protocol):
        def __init__(self) -> None:
            self.data = b""
            self.got = asyncio.Event()

        def data_received(self, data: bytes) -> None:
            self.data += data
            self.got.set()

        def abandon(self) -> None:
            raise AssertionError("not abandoned")

        async def take_over(self, transport: asyncio.Transport, previous: Any) -> None:
            transport.set_protocol(self)
            await self.got.wait()

    joined = Joined()

    async def upgrade(app: web.Application, request: Any) -> Answer:
        return switching("Switching Protocols", [(b"Upgrade", b"SPDY/3.1")], joined)

    async def hello(request: web.BaseRequest) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app[DRAIN] = Drain()
    front = Front(app, web.Server(hello), answer=upgrade)
    server = await asyncio.get_running_loop().create_server(front, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and await reader.readexactly(5) == b"hello"
        writer.write(
            b"POST /k8s/clusters/c-1/api/v1/namespaces/d/pods/p/exec HTTP/1.1\r\nHost: gw\r\n"
            b"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n"
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        writer.write(b"\x80\x03\x00\x01spdy")
        async with asyncio.timeout(5):
            await joined.got.wait()
        assert joined.data == b"\x80\x03\x00\x01spdy"
        assert await reader.read() == b""  # the upgrade is over: so is the connection
        writer.close()
    finally:
        server.close()
    assert warnings_of(caplog) == []


def _aiohttp_assumptions() -> Iterator[Assumption]:
    return (a for a in compat.REGISTRY if a.relies_on.startswith("aiohttp"))


# ldap3


def test_without_ldap3s_availability_flags_nothing_is_reset(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    recheck: Callable[[Assumption], bool],
) -> None:
    server = ldap3_compat.Server("127.0.0.1", port=389, connect_timeout=1)
    server.update_availability(server.address_info[0], False)
    ldap3_compat.revive([server], server)  # as installed: marked available again
    assert server.address_info[0][5] is None

    monkeypatch.setattr(ldap3_compat.Server, "reset_availability", lambda self: None)
    assert not recheck(ldap3_compat.AVAILABILITY)
    server.update_availability(server.address_info[0], False)
    ldap3_compat.revive([server], server)
    assert server.address_info[0][5] is False  # left to ldap3's own delay
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "ldap3-availability" in messages[0], messages

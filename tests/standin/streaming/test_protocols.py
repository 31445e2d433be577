"""exec/attach/port-forward at the protocol level, without kubectl: negotiation, framing, ends."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from standin import spdy, streaming
from tests.standin.streaming.clients import TIMEOUT, SpdyTestClient, spdy_connect
from tests.standin.streaming.standin import Server, run_standin

EXEC = "/api/v1/namespaces/default/pods/web/exec"
ATTACH = "/api/v1/namespaces/default/pods/web/attach"
PORTFORWARD = "/api/v1/namespaces/default/pods/web/portforward"


def q(
    *command: str, stdin: bool = False, stdout: bool = True, stderr: bool = True, tty: bool = False
) -> str:
    params: list[tuple[str, str]] = [("command", c) for c in command]
    params += [
        (k, "true")
        for k, v in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr), ("tty", tty))
        if v
    ]
    return "?" + urlencode(params)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with run_standin() as running:
        yield running
        # no streaming handler may outlive its client
        async with asyncio.timeout(TIMEOUT):
            while running.standin.active:
                await asyncio.sleep(0.01)


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


# ------------------------------------------------------------------------ plain HTTP answers


@pytest.mark.parametrize("path", [EXEC + q("true"), ATTACH + "?stdout=true", PORTFORWARD])
async def test_no_upgrade_is_a_bad_request(server: Server, path: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(server.url + path) as response:
        assert response.status == 400
        assert await response.json() == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Upgrade request required",
            "reason": "BadRequest",
            "code": 400,
        }


async def test_spdy_protocol_required(server: Server) -> None:
    conn = await spdy_connect(port_of(server), EXEC + q("true"), None)
    await conn.close()
    assert conn.status == 400
    assert conn.body == b"unable to upgrade: X-Stream-Protocol-Version is required\n"


async def test_spdy_protocol_mismatch_is_forbidden(server: Server) -> None:
    conn = await spdy_connect(port_of(server), EXEC + q("true"), ["v9.channel.k8s.io", "foo"])
    await conn.close()
    assert conn.status == 403
    assert conn.headers["x-accepted-stream-protocol-versions"] == list(
        streaming.SUPPORTED_STREAMING_PROTOCOLS
    )
    assert conn.body == (
        b"unable to upgrade: unable to negotiate protocol: "
        b"client supports [v9.channel.k8s.io foo], server accepts [v5.channel.k8s.io "
        b"v4.channel.k8s.io v3.channel.k8s.io v2.channel.k8s.io channel.k8s.io]\n"
    )


async def test_spdy_needs_the_spdy_upgrade_header(server: Server) -> None:
    conn = await spdy_connect(
        port_of(server), EXEC + q("true"), ["v4.channel.k8s.io"], upgrade="h2c"
    )
    await conn.close()
    assert conn.status == 400
    assert conn.body.startswith(
        b"unable to upgrade: missing upgrade headers in request: http.Header{"
    )


# ------------------------------------------------------------------------ SPDY exec


async def spdy_exec(
    server: Server,
    protocol: str,
    *command: str,
    stdin: bytes | None = None,
    tty: bool = False,
    kinds: tuple[str, ...] = ("error", "stdout", "stderr"),
) -> tuple[SpdyTestClient, dict[str, int]]:
    path = EXEC + q(*command, stdin=stdin is not None, stderr="stderr" in kinds, tty=tty)
    conn = await spdy_connect(port_of(server), path, [protocol])
    assert conn.status == 101, conn.body
    assert conn.headers["x-stream-protocol-version"] == [protocol]
    assert conn.headers["upgrade"] == ["SPDY/3.1"]
    client = conn.client
    assert client is not None
    ids = {}
    for kind in kinds + (("stdin",) if stdin is not None else ()):
        ids[kind] = await client.open({"streamtype": kind})
    if stdin is not None:
        await client.write(ids["stdin"], stdin, fin=True)
    await client.wait_for(lambda: client.goaway() is not None)
    await conn.close()
    return client, ids


@pytest.mark.parametrize("protocol", ["v4.channel.k8s.io", "v5.channel.k8s.io"])
async def test_spdy_exec_v4_exit_code(server: Server, protocol: str) -> None:
    client, ids = await spdy_exec(server, protocol, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert await client.read_all(ids["stdout"]) == b"out\n"
    assert await client.read_all(ids["stderr"]) == b"err\n"
    status = json.loads(await client.read_all(ids["error"]))
    assert status == {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: error executing command "
        "[sh -c echo out; echo err >&2; exit 7], exit code 7",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "7"}]},
    }
    assert client.goaway() == spdy.GoAwayFrame(ids["stderr"], 0)


async def test_spdy_exec_success_status_and_stdin(server: Server) -> None:
    client, ids = await spdy_exec(server, "v4.channel.k8s.io", "cat", stdin=b"through cat\n")
    assert await client.read_all(ids["stdout"]) == b"through cat\n"
    assert await client.read_all(ids["error"]) == b'{"metadata":{},"status":"Success"}'
    assert client.streams[ids["stdin"]].fin  # the server closes its side of stdin too


@pytest.mark.parametrize("protocol", ["v3.channel.k8s.io", "v2.channel.k8s.io"])
async def test_spdy_exec_pre_v4_text_errors(server: Server, protocol: str) -> None:
    client, ids = await spdy_exec(server, protocol, "false")
    assert await client.read_all(ids["error"]) == (
        b"command terminated with non-zero exit code: error executing command [false], exit code 1"
    )
    client, ids = await spdy_exec(server, protocol, "true")
    assert await client.read_all(ids["error"]) == b""


async def test_spdy_exec_v1_resets_error_stream_and_closes_stdin(server: Server) -> None:
    client, ids = await spdy_exec(server, "channel.k8s.io", "cat", stdin=b"x")
    assert client.streams[ids["error"]].reset == spdy.RstStatus.CANCEL
    assert await client.read_all(ids["stdout"]) == b"x"


async def test_spdy_exec_tty_resize(server: Server) -> None:
    path = EXEC + q("stty", "size", tty=True, stderr=False)
    conn = await spdy_connect(port_of(server), path, ["v4.channel.k8s.io"])
    client = conn.client
    assert client is not None
    error = await client.open({"streamtype": "error"})
    stdout = await client.open({"streamtype": "stdout"})
    resize = await client.open({"streamtype": "resize"})
    await client.write(resize, b'{"Width":132,"Height":43}')
    assert await client.read_all(stdout) == b"43 132\r\n"
    assert await client.read_all(error) == b'{"metadata":{},"status":"Success"}'
    await conn.close()


async def test_spdy_ping_is_echoed_and_unknown_stream_types_ignored(server: Server) -> None:
    conn = await spdy_connect(port_of(server), EXEC + q("sleep", "0.2"), ["v4.channel.k8s.io"])
    client = conn.client
    assert client is not None
    await client.send(spdy.PingFrame(41))
    await client.wait_for(lambda: spdy.PingFrame(41) in client.frames)
    await client.send(spdy.SettingsFrame((spdy.Setting(7, 1 << 20),)))
    await client.send(spdy.WindowUpdateFrame(0, 1000))
    odd = await client.open({"streamtype": "bogus"})  # accepted, not counted
    error = await client.open({"streamtype": "error"})
    await client.open({"streamtype": "stdout"})
    await client.open({"streamtype": "stderr"})
    assert await client.read_all(error) == b'{"metadata":{},"status":"Success"}'
    assert client.streams[odd].replied
    await conn.close()


async def test_spdy_client_going_away_ends_a_long_command(server: Server) -> None:
    conn = await spdy_connect(port_of(server), EXEC + q("sleep", "600"), ["v4.channel.k8s.io"])
    client = conn.client
    assert client is not None
    for kind in ("error", "stdout", "stderr"):
        await client.open({"streamtype": kind})
    await asyncio.sleep(0.1)
    await conn.close()  # the fixture checks that the handler ends


async def test_spdy_protocol_error_sends_goaway(server: Server) -> None:
    conn = await spdy_connect(port_of(server), EXEC + q("true"), ["v4.channel.k8s.io"])
    assert conn.client is not None
    conn.writer.write(b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01")  # SPDY/2 PING
    await conn.client.wait_for(lambda: conn.client is not None and conn.client.eof)
    assert conn.client.goaway() == spdy.GoAwayFrame(0, spdy.GoAwayStatus.PROTOCOL_ERROR)
    await conn.close()


# ------------------------------------------------------------------------ WebSocket exec/attach


async def ws_session(
    server: Server,
    path: str,
    protocols: list[str],
    *,
    text: bool = False,
    send: list[Any] | None = None,
) -> tuple[str | None, list[tuple[int, bytes]]]:
    """Run a channel.k8s.io session: returns the protocol and (channel, data) messages."""
    received: list[tuple[int, bytes]] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            server.url + path,
            protocols=protocols,
            timeout=aiohttp.ClientWSTimeout(ws_close=TIMEOUT),
        ) as ws:
            for message in send or []:
                if isinstance(message, str):
                    await ws.send_str(message)
                else:
                    await ws.send_bytes(message)
            async with asyncio.timeout(TIMEOUT):
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        received.append((msg.data[0], msg.data[1:]))
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        assert text
                        received.append(
                            (ord(msg.data[0]) - ord("0"), base64.b64decode(msg.data[1:]))
                        )
            return ws.protocol, received


def channel_data(messages: list[tuple[int, bytes]], channel: int) -> bytes:
    return b"".join(data for ch, data in messages if ch == channel)


async def test_ws_v5_exit_code_and_close_signal(server: Server) -> None:
    protocol, messages = await ws_session(
        server,
        EXEC + q("sh", "-c", "cat; exit 3", stdin=True),
        ["v5.channel.k8s.io", "v4.channel.k8s.io"],
        send=[b"\x00hello ", b"\x00world", b"\xff\x00"],
    )
    assert protocol == "v5.channel.k8s.io"
    assert messages[0] == (1, b"")  # "connected", on the lowest writable channel
    assert channel_data(messages, 1) == b"hello world"
    assert json.loads(channel_data(messages, 3)) == {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: "
        "command terminated with exit code 3",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
    }


async def test_ws_v4_status_is_the_kubelets(server: Server) -> None:
    protocol, messages = await ws_session(
        server, EXEC + q("false"), ["v4.channel.k8s.io", "channel.k8s.io"]
    )
    assert protocol == "v4.channel.k8s.io"
    status = json.loads(channel_data(messages, 3))
    assert status["message"] == (
        "command terminated with non-zero exit code: error executing command [false], exit code 1"
    )


async def test_ws_base64_channel_protocol(server: Server) -> None:
    protocol, messages = await ws_session(
        server,
        EXEC + q("sh", "-c", "echo hi >&2; exit 2", stdout=False),
        ["bogus", "base64.channel.k8s.io"],
        text=True,
    )
    assert protocol == "base64.channel.k8s.io"
    assert messages[0] == (2, b"")  # stdout not requested: stderr is the lowest writable
    assert channel_data(messages, 2) == b"hi\n"
    assert channel_data(messages, 3) == (
        b"command terminated with non-zero exit code: error executing command "
        b"[sh -c echo hi >&2; exit 2], exit code 2"
    )


@pytest.mark.parametrize("protocols", [[], ["channel.k8s.io"]])
async def test_ws_pre_v4_success_writes_no_status(server: Server, protocols: list[str]) -> None:
    protocol, messages = await ws_session(server, EXEC + q("echo", "a", "b"), protocols)
    assert protocol == (protocols[0] if protocols else None)
    assert messages == [(1, b""), (1, b"a b\n")]


async def test_ws_unsupported_protocols_are_forbidden(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(server.url + EXEC + q("true"), protocols=["v3.channel.k8s.io"])
    assert caught.value.status == 403


async def test_ws_attach_greets_and_echoes(server: Server) -> None:
    _, messages = await ws_session(
        server,
        ATTACH + "?stdin=true&stdout=true&stderr=true&container=main",
        ["v5.channel.k8s.io"],
        send=[b"\x00ping\n", b"\xff\x00"],
    )
    assert channel_data(messages, 1) == b"attached to default/web main\nping\n"
    assert json.loads(channel_data(messages, 3)) == {"metadata": {}, "status": "Success"}


async def test_ws_tty_translates_newlines_and_resizes(server: Server) -> None:
    _, messages = await ws_session(
        server,
        EXEC + q("sh", "-c", "stty size; echo x >&2", tty=True, stderr=False),
        ["v5.channel.k8s.io"],
        send=[b'\x04{"Width":80,"Height":24}'],
    )
    assert channel_data(messages, 1) == b"24 80\r\nx\r\n"


async def test_ws_client_going_away_ends_a_long_command(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            server.url + EXEC + q("sleep", "600"), protocols=["v5.channel.k8s.io"]
        ) as ws:
            assert (await ws.receive_bytes()) == b"\x01"


# ------------------------------------------------------------------------ port-forward


async def spdy_forward(
    client: SpdyTestClient,
    port: int,
    request_id: str | None,
    payload: bytes,
    *,
    half_close: bool = True,
) -> tuple[int, int]:
    headers = {"streamtype": "error", "port": str(port)}
    if request_id is not None:
        headers["requestid"] = request_id
    error = await client.open(headers)
    await client.write(error, b"", fin=True)  # kubectl never writes to the error stream
    data = await client.open({**headers, "streamtype": "data"})
    await client.write(data, payload, fin=half_close)
    return error, data


async def test_spdy_portforward_pairs_streams(server: Server) -> None:
    conn = await spdy_connect(port_of(server), PORTFORWARD, ["portforward.k8s.io"])
    assert conn.status == 101
    assert conn.headers["x-stream-protocol-version"] == ["portforward.k8s.io"]
    client = conn.client
    assert client is not None
    http = [
        await spdy_forward(
            client, 80, str(i), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", half_close=False
        )
        for i in range(3)
    ]
    echo = await spdy_forward(client, 5432, "3", b"\x00\x01binary")
    legacy = await spdy_forward(client, 8080, None, b"HEAD /x HTTP/1.0\r\n\r\n")  # no requestID
    for error, data in http:
        response = await client.read_all(data)
        assert response.startswith(b"HTTP/1.1 200 OK\r\n")
        assert response.endswith(b"\r\n\r\nhello from web port 80\n")
        assert await client.read_all(error) == b""
    assert await client.read_all(echo[1]) == b"\x00\x01binary"
    head = await client.read_all(legacy[1])
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    await client.send(spdy.PingFrame(7))
    await client.wait_for(lambda: spdy.PingFrame(7) in client.frames)
    await conn.close()


@pytest.mark.parametrize(
    "headers",
    [
        {"streamtype": "data"},
        {"streamtype": "data", "port": "0"},
        {"streamtype": "data", "port": "70000"},
        {"streamtype": "data", "port": "eighty"},
        {"streamtype": "stdin", "port": "80"},
        {"port": "80"},
    ],
)
async def test_spdy_portforward_rejects_bad_streams(
    server: Server, headers: dict[str, str]
) -> None:
    conn = await spdy_connect(port_of(server), PORTFORWARD, ["portforward.k8s.io"])
    client = conn.client
    assert client is not None
    sid = await client.open(headers)
    assert client.streams[sid].reset == spdy.RstStatus.CANCEL
    await conn.close()


async def test_ws_tunneled_portforward(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            server.url + PORTFORWARD, protocols=["SPDY/3.1+portforward.k8s.io"]
        ) as ws:
            assert ws.protocol == "SPDY/3.1+portforward.k8s.io"
            client = SpdyTestClient(ws.send_bytes)

            async def pump() -> None:
                async for msg in ws:
                    assert msg.type == aiohttp.WSMsgType.BINARY  # only binary messages, ever
                    await client.feed(msg.data)

            reader = asyncio.ensure_future(pump())
            try:
                error, data = await spdy_forward(client, 80, "0", b"GET / HTTP/1.1\r\n\r\n")
                assert (await client.read_all(data)).endswith(b"hello from web port 80\n")
                assert await client.read_all(error) == b""
                _, echo = await spdy_forward(client, 81, "1", b"x" * 100_000)
                assert await client.read_all(echo) == b"x" * 100_000
            finally:
                reader.cancel()


async def test_ws_tunnel_protocol_mismatch_is_forbidden(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(
                server.url + PORTFORWARD, protocols=["SPDY/3.1+v9.portforward.k8s.io"]
            )
    assert caught.value.status == 403
    assert caught.value.headers is not None
    assert caught.value.headers["X-Accepted-Stream-Protocol-Versions"] == "portforward.k8s.io"


@pytest.mark.parametrize(
    ("protocol", "text"), [("v4.channel.k8s.io", False), ("v4.base64.channel.k8s.io", True)]
)
async def test_ws_channel_portforward(server: Server, protocol: str, text: bool) -> None:
    request = b"GET / HTTP/1.1\r\n\r\n"
    # one request per port: the session ends once every port's connection is done
    send: list[Any] = [
        f"{ch}{base64.b64encode(request).decode()}" if text else bytes((ch,)) + request
        for ch in (0, 2)
    ]
    got, messages = await ws_session(
        server, PORTFORWARD + "?ports=80,8080", [protocol], text=text, send=send
    )
    assert got == protocol
    assert messages[:4] == [
        (0, struct.pack("<H", 80)),
        (1, struct.pack("<H", 80)),
        (2, struct.pack("<H", 8080)),
        (3, struct.pack("<H", 8080)),
    ]
    assert channel_data(messages[4:], 0).endswith(b"hello from web port 80\n")
    assert channel_data(messages[4:], 2).endswith(b"hello from web port 8080\n")


async def test_ws_channel_portforward_needs_ports(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(server.url + PORTFORWARD, protocols=["v4.channel.k8s.io"])
    assert caught.value.status == 400


# ------------------------------------------------------------------------ emulated commands


class FakeIO(streaming.ProcessIO):
    def __init__(self, stdin: bytes = b"", tty: bool = False) -> None:
        self.out = bytearray()
        self.err = bytearray()
        inbound = streaming.Inbound()
        inbound.feed(stdin)
        inbound.feed_eof()

        async def out(data: bytes) -> None:
            self.out += data

        async def err(data: bytes) -> None:
            self.err += data

        super().__init__(stdin=inbound, stdout=out, stderr=err, tty=tty)


POD: dict[str, Any] = {
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {
        "containers": [
            {"name": "main", "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {}}]}
        ]
    },
}


@pytest.mark.parametrize(
    ("argv", "stdin", "code", "out", "err"),
    [
        (["echo", "a", "b"], b"", 0, b"a b\n", b""),
        (["/bin/echo", "-n", "x"], b"", 0, b"x", b""),
        (["cat"], b"in", 0, b"in", b""),
        (["cat", "/etc/hostname"], b"", 0, b"web\n", b""),
        (["cat", "/nope"], b"", 1, b"", b"cat: can't open '/nope': No such file or directory\n"),
        (["true"], b"", 0, b"", b""),
        (["false"], b"", 1, b"", b""),
        (["hostname"], b"", 0, b"web\n", b""),
        (["sh", "-c", "exit 300"], b"", 44, b"", b""),
        (["sh", "-c", "false || echo 'a;b' && exit 4; echo never"], b"", 4, b"a;b\n", b""),
        (["sh", "-c", "true && false; echo $?"], b"", 0, b"1\n", b""),
        (["sh", "-c", "nosuch arg"], b"", 127, b"", b"sh: nosuch: not found\n"),
        (["sh", "-c", "echo x 1>&2; echo y >/dev/null"], b"", 0, b"", b"x\n"),
        (["sh"], b"echo from stdin\nexit 5\n", 5, b"from stdin\n", b""),
        (
            ["bash", "-c", "echo a | cat"],
            b"",
            2,
            b"",
            b"sh: syntax error: '|' is not supported by the stand-in shell\n",
        ),
        (["sleep", "0"], b"", 0, b"", b""),
        (["sleep", "x"], b"", 1, b"", b"sleep: invalid number 'x'\n"),
        (["stty", "size"], b"", 1, b"", b"stty: standard input: Not a tty\n"),
    ],
)
async def test_emulated_commands(
    argv: list[str], stdin: bytes, code: int, out: bytes, err: bytes
) -> None:
    io = FakeIO(stdin)
    assert await streaming.run_command(argv, io, POD, "main") == code
    assert (bytes(io.out), bytes(io.err)) == (out, err)


async def test_env_lists_the_container_environment() -> None:
    io = FakeIO(tty=True)
    assert await streaming.run_command(["env"], io, POD, "main") == 0
    assert io.out.split(b"\r\n") == [
        b"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        b"HOSTNAME=web",
        b"TERM=xterm",
        b"A=1",
        b"HOME=/root",
        b"",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nosuch"], 'exec: "nosuch": executable file not found in $PATH'),
        (["/opt/x"], 'exec: "/opt/x": stat /opt/x: no such file or directory'),
        ([], 'exec: "": executable file not found in $PATH'),
    ],
)
async def test_unknown_programs_fail_to_start(argv: list[str], message: str) -> None:
    io = FakeIO()
    assert await streaming.run_command(argv, io, POD, "main") == 126
    assert (
        bytes(io.out)
        == (
            "OCI runtime exec failed: exec failed: unable to start container process: "
            f"{message}: unknown\r\n"
        ).encode()
    )


async def test_tty_line_discipline() -> None:
    io = FakeIO(b"ab\x7fc\rdef\x04", tty=True)
    assert await streaming.run_command(["cat"], io, POD, "main") == 0
    # the echo (with the erased "b"), then what cat read: "ac\n" (ONLCR) and "def" (^D)
    assert bytes(io.out) == b"ab\b \bc\r\ndef" + b"ac\r\n" + b"def"


async def test_tty_interrupt() -> None:
    io = FakeIO(b"\x03", tty=True)
    assert await streaming.run_command(["sleep", "100"], io, POD, "main") == 130
    assert bytes(io.out) == b"^C\r\n"


async def test_tty_interactive_shell() -> None:
    io = FakeIO(b"echo hi\rexit 3\r", tty=True)
    assert await streaming.run_command(["sh"], io, POD, "main") == 3
    assert bytes(io.out).startswith(b"/ # ")
    assert b"hi\r\n" in io.out


def test_http_verdict() -> None:
    verdict = streaming._http_verdict
    assert verdict(b"G") is None
    assert verdict(b"GET / HTTP/1.1") is None
    assert verdict(b"GET / HTTP/1.1\r\n") is True
    assert verdict(b"POST /x HTTP/1.0\n") is True
    assert verdict(b"GET nonsense\r\n") is False
    assert verdict(b"hello") is False
    assert verdict(b"\x00\x01") is False

"""The streaming half of the stand-in API server: ``exec``, ``attach`` and ``port-forward``.

The REST core calls :func:`serve_exec`, :func:`serve_attach` and :func:`serve_portforward` once a
request is authenticated, authorised and audited.  What a real cluster does is reproduced in
one process, from kube-apiserver down to kubelet:

* ``Connection: upgrade`` is required, else ``400 Upgrade request required`` (the apiserver's
  ``UpgradeAwareHandler``).
* WebSocket requests offering ``v5.channel.k8s.io`` get the apiserver's stream translator
  (v5 only, with the CLOSE signal); other WebSocket requests get the kubelet's channel protocols
  (``channel.k8s.io``, ``base64.channel.k8s.io``, ``v4.channel.k8s.io``,
  ``v4.base64.channel.k8s.io`` or none), first client preference wins, 403 if none fits.
* Port-forward WebSocket requests offering ``SPDY/3.1+…k8s.io`` protocols get the apiserver's
  tunnelling handler: SPDY frames inside binary messages (kubectl 1.31+).  Other WebSocket
  port-forward requests get the kubelet's channel-per-port protocol.
* Everything else is a SPDY/3.1 upgrade negotiated on ``X-Stream-Protocol-Version`` like
  ``httpstream.Handshake`` (403 and ``X-Accepted-Stream-Protocol-Versions`` on mismatch); exec
  and attach streams are collected like the kubelet's ``remotecommand`` protocol handlers,
  port-forward streams are paired by ``requestID`` like its ``portforward`` handler.

Commands are emulated, not run, except ``tar`` and ``test``, which run for real in the
container's own root directory (:mod:`standin.pods`) for ``kubectl cp``; see
:func:`run_command`.  Port-forward never dials: bytes sent to any port are answered by a tiny
in-process HTTP server or echoed (see :func:`serve_port`).

Known deviations: a SPDY upgrade without ``X-Stream-Protocol-Version`` gets ``400`` with the
handshake error (a kubelet writes nothing, so Go answers an empty 200); ``attach`` without stdin
ends after its greeting (a real container keeps streaming until it exits); unknown programs fail
the cri-dockerd way (exit 126), not the containerd way (an InternalError Status).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import shlex
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from aiohttp import WSMsgType, hdrs, web

from . import spdy
from .pods import PodFilesystems
from .upgrade import RawUpgrade

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# ----------------------------------------------------------------------------- protocol names

STREAM_PROTOCOL_V1: Final = "channel.k8s.io"
STREAM_PROTOCOL_V2: Final = "v2.channel.k8s.io"
STREAM_PROTOCOL_V3: Final = "v3.channel.k8s.io"
STREAM_PROTOCOL_V4: Final = "v4.channel.k8s.io"
STREAM_PROTOCOL_V5: Final = "v5.channel.k8s.io"
BASE64_STREAM_PROTOCOL_V1: Final = "base64.channel.k8s.io"
BASE64_STREAM_PROTOCOL_V4: Final = "v4.base64.channel.k8s.io"
PORT_FORWARD_PROTOCOL_V1: Final = "portforward.k8s.io"
SPDY_TUNNELING_PREFIX: Final = "SPDY/3.1+"
KUBERNETES_SUFFIX: Final = ".k8s.io"

SUPPORTED_STREAMING_PROTOCOLS: Final = (
    STREAM_PROTOCOL_V5,
    STREAM_PROTOCOL_V4,
    STREAM_PROTOCOL_V3,
    STREAM_PROTOCOL_V2,
    STREAM_PROTOCOL_V1,
)
"""The kubelet's SPDY exec/attach protocols (``remotecommand.SupportedStreamingProtocols``)."""
SUPPORTED_PORT_FORWARD_PROTOCOLS: Final = (PORT_FORWARD_PROTOCOL_V1,)

HEADER_PROTOCOL_VERSION: Final = "X-Stream-Protocol-Version"
HEADER_ACCEPTED_PROTOCOL_VERSIONS: Final = "X-Accepted-Stream-Protocol-Versions"

STREAM_CLOSE: Final = 255
"""v5 CLOSE signal: a message ``[255, channel]`` half-closes that channel."""

WS_PROCESS_START_DELAY: Final = 0.03
"""Seconds between a WebSocket upgrade and the process's first output.

client-go's WebSocket executor starts reading right after the upgrade and creates its streams a
moment later; a message for a stream it has not created yet is discarded ("Unknown stream id,
discarding message"). The real server never meets that race in practice: after the upgrade its
stream translator dials the kubelet and the container runtime starts the process, tens of
milliseconds. Output sent at once lost ``kubectl exec -- echo`` output about once in a thousand
runs, so the stand-in waits as a real server does. SPDY clients create their streams
explicitly, so the SPDY paths wait for those instead.
"""

# ----------------------------------------------------------------------------- tunables

STREAM_CREATION_TIMEOUT = 30.0
"""kubelet ``DefaultStreamCreationTimeout``: how long the client has to open its streams."""
FINISH_TIMEOUT = 10.0
"""Once a session is over, how long to wait for the client to hang up before closing."""
INBOUND_LIMIT = 1 << 20
"""Bytes buffered for one stream/channel before reading from the client is paused."""
OUTBOUND_LIMIT = 256 * 1024
"""Bytes queued for sending on a SPDY session before writers wait."""
DATA_CHUNK = 32 * 1024
"""Largest DATA frame / channel message written (Go's io.Copy buffer size)."""
MAX_WS_MESSAGE = 16 * 1024 * 1024

# ----------------------------------------------------------------------------- Status bodies

_SUCCESS: Final[dict[str, Any]] = {"metadata": {}, "status": "Success"}


def _go_list(items: list[str]) -> str:
    """Go's ``%v`` of a ``[]string``."""
    return "[" + " ".join(items) + "]"


def _exit_status(code: int, message: str) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def _internal_error_status(message: str) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _api_status_response(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.Response(
        status=code,
        body=_json(body) + b"\n",
        content_type="application/json",
        headers={"Cache-Control": "no-cache, private"},
    )


def _http_error(code: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """Go's ``http.Error``: plain text, the message and a newline."""
    response = web.Response(
        status=code, text=message + "\n", content_type="text/plain", charset="utf-8"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    for name, value in (headers or {}).items():
        response.headers.add(name, value)
    return response


# ----------------------------------------------------------------------------- request inspection


def _header_values(request: web.BaseRequest, name: str) -> list[str]:
    """All comma-separated values over every header line (``commaSeparatedHeaderValues``)."""
    return [
        item.strip()
        for line in request.headers.getall(name, [])
        for item in line.split(",")
        if item.strip()
    ]


def is_upgrade_request(request: web.BaseRequest) -> bool:
    """``httpstream.IsUpgradeRequest``: some Connection header mentions "upgrade"."""
    return any("upgrade" in v.lower() for v in request.headers.getall(hdrs.CONNECTION, []))


_CONNECTION_UPGRADE = re.compile(r"(^|.*,\s*)upgrade($|\s*,)")


def is_websocket_request(request: web.BaseRequest) -> bool:
    """``wsstream.IsWebSocketRequest``."""
    if request.headers.get(hdrs.UPGRADE, "").lower() != "websocket":
        return False
    return bool(_CONNECTION_UPGRADE.match(request.headers.get(hdrs.CONNECTION, "").lower()))


def negotiate_stream_protocol(client: list[str], server: tuple[str, ...]) -> str | None:
    """``httpstream.negotiateProtocol``: the first client protocol the server supports."""
    for protocol in client:
        if protocol in server:
            return protocol
    return None


@dataclass(frozen=True)
class _ChannelProtocol:
    base64: bool
    status_style: str
    """"v1" (text on failure only), "v4" (JSON Status) or "v5" (the translator's JSON Status)."""


_WS_REMOTECOMMAND: Final[dict[str, _ChannelProtocol]] = {
    "": _ChannelProtocol(base64=False, status_style="v1"),
    STREAM_PROTOCOL_V1: _ChannelProtocol(base64=False, status_style="v1"),
    BASE64_STREAM_PROTOCOL_V1: _ChannelProtocol(base64=True, status_style="v1"),
    STREAM_PROTOCOL_V4: _ChannelProtocol(base64=False, status_style="v4"),
    BASE64_STREAM_PROTOCOL_V4: _ChannelProtocol(base64=True, status_style="v4"),
}
"""The kubelet's WebSocket exec/attach protocols."""
_WS_V5: Final = _ChannelProtocol(base64=False, status_style="v5")
_WS_PORTFORWARD: Final[dict[str, bool]] = {
    "": False,
    STREAM_PROTOCOL_V4: False,
    BASE64_STREAM_PROTOCOL_V4: True,
}
"""The kubelet's WebSocket port-forward protocols (value: base64)."""


def negotiate_websocket_remotecommand(offered: list[str]) -> str | None:
    """v5 goes to the apiserver's translator; otherwise x/net/websocket's first-match rule."""
    if STREAM_PROTOCOL_V5 in offered:
        return STREAM_PROTOCOL_V5
    for protocol in offered or [""]:
        if protocol in _WS_REMOTECOMMAND:
            return protocol
    return None


def tunneled_spdy_protocols(offered: list[str]) -> list[str]:
    """``spdyProtocolsFromWebsocketProtocols``: ``SPDY/3.1+<p>.k8s.io`` → ``<p>.k8s.io``."""
    return [
        p.removeprefix(SPDY_TUNNELING_PREFIX)
        for p in offered
        if p.startswith(SPDY_TUNNELING_PREFIX) and p.endswith(KUBERNETES_SUFFIX)
    ]


# ----------------------------------------------------------------------------- byte queues


class Inbound:
    """Bytes received for one stream or channel: a FIFO with EOF and a soft size limit."""

    def __init__(
        self, limit: int = INBOUND_LIMIT, on_consumed: Callable[[int], None] | None = None
    ) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._discard = False
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._limit = limit
        self._on_consumed = on_consumed

    @property
    def size(self) -> int:
        return self._size

    @property
    def at_eof(self) -> bool:
        return self._eof

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self._eof or self._discard:
            if self._on_consumed is not None:
                self._on_consumed(len(data))
            return
        self._chunks.append(data)
        self._size += len(data)
        self._readable.set()
        if self._size >= self._limit:
            self._room.clear()

    def feed_eof(self) -> None:
        self._eof = True
        self._readable.set()
        self._room.set()

    def discard(self) -> None:
        """The reader is gone: drop what is buffered and everything that arrives later."""
        self._discard = True
        dropped, self._size = self._size, 0
        self._chunks.clear()
        self.feed_eof()
        if dropped and self._on_consumed is not None:
            self._on_consumed(dropped)

    async def read(self) -> bytes:
        """The next chunk, or ``b""`` at EOF."""
        while not self._chunks:
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._chunks.popleft()
        self._size -= len(data)
        if self._size < self._limit:
            self._room.set()
        if self._on_consumed is not None:
            self._on_consumed(len(data))
        return data

    async def wait_room(self) -> None:
        await self._room.wait()


# ----------------------------------------------------------------------------- terminal


@dataclass(frozen=True)
class TerminalSize:
    width: int
    height: int


class Terminal:
    """Terminal sizes received on the resize stream/channel (JSON ``{"Width":…,"Height":…}``)."""

    def __init__(self) -> None:
        self.sizes: list[TerminalSize] = []
        self._changed = asyncio.Event()

    @property
    def size(self) -> TerminalSize | None:
        return self.sizes[-1] if self.sizes else None

    def resize(self, size: TerminalSize) -> None:
        self.sizes.append(size)
        self._changed.set()

    async def wait_size(self, timeout: float) -> TerminalSize | None:
        if self.size is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        return self.size


async def _pump_resizes(source: Inbound, terminal: Terminal) -> None:
    """``handleResizeEvents``: a stream of JSON objects; stops at the first undecodable one."""
    decoder = json.JSONDecoder()
    pending = ""
    while chunk := await source.read():
        pending += chunk.decode("utf-8", "replace")
        while pending.strip():
            text = pending.lstrip()
            try:
                obj, end = decoder.raw_decode(text)
            except json.JSONDecodeError:
                if len(text) > 64 * 1024:
                    return
                break  # probably incomplete: wait for more
            pending = text[end:]
            if not isinstance(obj, dict):
                return
            fields = {str(k).lower(): v for k, v in obj.items()}
            try:
                size = TerminalSize(int(fields.get("width", 0)), int(fields.get("height", 0)))
            except (TypeError, ValueError):
                return
            terminal.resize(size)


# ----------------------------------------------------------------------------- process emulation

Writer = Callable[[bytes], Awaitable[None]]


class ProcessIO:
    """What an emulated process sees: stdin, stdout, stderr and its terminal.

    With a TTY, output gets ONLCR (``\n`` → ``\r\n``), stderr goes to stdout, and stdin passes
    through a small canonical-mode line discipline (see :meth:`run`): input is echoed, CR becomes
    LF, lines are delivered when complete, backspace edits, ^D at the start of a line is EOF and
    ^C interrupts the process (exit code 130).
    """

    def __init__(
        self,
        *,
        stdin: Inbound | None,
        stdout: Writer | None,
        stderr: Writer | None,
        tty: bool,
        terminal: Terminal | None = None,
    ) -> None:
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stdout if tty else stderr
        self.tty = tty
        self.terminal = terminal or Terminal()
        self._cooked = Inbound() if tty and stdin is not None else None
        self._pending = b""
        self._interrupted = False

    async def run(self, work: Coroutine[Any, Any, int]) -> int:
        """Run a process body; with a TTY, under the line discipline (^C gives 130)."""
        if self._cooked is None:
            return await work
        task = asyncio.ensure_future(work)
        discipline = asyncio.ensure_future(self._line_discipline(task))
        try:
            return await task
        except asyncio.CancelledError:
            if self._interrupted:
                return 130
            raise
        finally:
            await _cancel(discipline)

    async def _line_discipline(self, process: asyncio.Future[int]) -> None:
        assert self._stdin is not None and self._cooked is not None
        line = bytearray()
        while chunk := await self._stdin.read():
            echo = bytearray()
            for byte in chunk:
                if byte == 0x03:  # ^C
                    echo += b"^C\r\n"
                    self._interrupted = True
                    process.cancel()
                elif byte == 0x04:  # ^D
                    if line:
                        self._cooked.feed(bytes(line))
                        line.clear()
                    else:
                        self._cooked.feed_eof()
                elif byte in (0x7F, 0x08):
                    if line:
                        line.pop()
                        echo += b"\b \b"
                elif byte in (0x0D, 0x0A):  # ICRNL
                    line.append(0x0A)
                    echo += b"\r\n"
                    self._cooked.feed(bytes(line))
                    line.clear()
                else:
                    line.append(byte)
                    echo.append(byte)
            if echo and self._stdout is not None:
                await self._stdout(bytes(echo))
            if self._interrupted:
                return
        if line:
            self._cooked.feed(bytes(line))
        self._cooked.feed_eof()

    async def read(self) -> bytes:
        """A chunk of stdin, ``b""`` at EOF (or when stdin was not requested)."""
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        source = self._cooked or self._stdin
        return b"" if source is None else await source.read()

    async def read_line(self) -> bytes:
        """One line of stdin including its newline (the rest at EOF), ``b""`` at EOF."""
        data = b""
        while b"\n" not in data:
            chunk = await self.read()
            if not chunk:
                return data
            data += chunk
        line, _, self._pending = data.partition(b"\n")
        return line + b"\n"

    async def _emit(self, writer: Writer | None, data: bytes) -> None:
        if writer is None or not data:
            return
        if self.tty:  # the line discipline's ONLCR
            data = data.replace(b"\n", b"\r\n")
        for start in range(0, len(data), DATA_CHUNK):
            await writer(data[start : start + DATA_CHUNK])

    async def write(self, data: bytes) -> None:
        await self._emit(self._stdout, data)

    async def write_err(self, data: bytes) -> None:
        await self._emit(self._stderr, data)


@dataclass
class _Redirect:
    out: Callable[[bytes], Awaitable[None]]
    err: Callable[[bytes], Awaitable[None]]


class _ShellExit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


_BIN_DIRS: Final = ("/bin", "/usr/bin", "/sbin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")
_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SHELLS: Final = frozenset({"sh", "bash", "ash"})


class _Process:
    """One emulated process tree (the command and, for ``sh -c``, the commands it runs)."""

    def __init__(
        self,
        io: ProcessIO,
        pod: Mapping[str, Any],
        container: str,
        files: PodFilesystems | None = None,
    ) -> None:
        self.io = io
        self.pod = pod
        self.container = container
        self.files = files
        meta = pod.get("metadata") or {}
        self.pod_name = str(meta.get("name", ""))
        self.std = _Redirect(io.write, io.write_err)

    def environment(self) -> list[tuple[str, str]]:
        env = [("PATH", _PATH), ("HOSTNAME", self.pod_name)]
        if self.io.tty:
            env.append(("TERM", "xterm"))
        env.extend(
            (str(var["name"]), str(var.get("value", "")))
            for var in self.container_spec().get("env") or []
            if "name" in var and "valueFrom" not in var
        )
        env.append(("HOME", "/root"))
        return env

    def container_spec(self) -> Mapping[str, Any]:
        for spec in (self.pod.get("spec") or {}).get("containers") or []:
            if spec.get("name") == self.container:
                return dict(spec)
        return {}

    def resolve(self, argv0: str) -> str | None:
        """The program a path names (``/bin/echo`` → ``echo``), or None."""
        if "/" not in argv0:
            name = argv0
        else:
            directory, _, name = argv0.rpartition("/")
            if directory not in _BIN_DIRS:
                return None
        if name in _REAL_PROGRAMS:
            return name if self.files is not None else None
        return name if name in _COMMANDS or name in _SHELLS else None

    async def run(self, argv: list[str]) -> int:
        """Run ``argv`` as the container runtime would: unknown programs fail to start."""
        name = self.resolve(argv[0]) if argv else None
        if name is None:
            program = argv[0] if argv else ""
            if "/" in program:
                why = f"exec: {json.dumps(program)}: stat {program}: no such file or directory"
            else:
                why = f"exec: {json.dumps(program)}: executable file not found in $PATH"
            await self.io.write(
                f"OCI runtime exec failed: exec failed: unable to start container process: "
                f"{why}: unknown\r\n".encode()
            )
            return 126
        return await self.command(name, argv[1:], self.std)

    async def command(self, name: str, args: list[str], std: _Redirect) -> int:
        if name in _SHELLS:
            return await self.shell(args, std)
        if name in _REAL_PROGRAMS:
            return await self.real_program(name, args, std)
        return await _COMMANDS[name](self, args, std)

    async def real_program(self, name: str, args: list[str], std: _Redirect) -> int:
        """Run the host's ``name`` in this container's root directory (``pods.py``)."""
        assert self.files is not None
        root = self.files.root(self.pod, self.container)
        return await self.files.run(
            root,
            [name, *args],
            self.environment(),
            stdin=self.io.read,
            stdout=std.out,
            stderr=std.err,
            workdir=str(self.container_spec().get("workingDir") or "/"),
        )

    # -- the shell ------------------------------------------------------------------------

    async def shell(self, args: list[str], std: _Redirect) -> int:
        if args[:1] == ["-c"]:
            if len(args) < 2:
                await std.err(b"sh: -c requires an argument\n")
                return 2
            script = args[1]
        elif args:
            await std.err(f"sh: can't open '{args[0]}': No such file or directory\n".encode())
            return 2
        else:
            return await self.interactive(std)
        try:
            return await self.script(script, std)
        except _ShellExit as exc:
            return exc.code

    async def interactive(self, std: _Redirect) -> int:
        """Commands from stdin, one line at a time (with busybox's root prompt on a TTY)."""
        status = 0
        try:
            while True:
                if self.io.tty:
                    await std.err(b"/ # ")
                line = await self.io.read_line()
                if not line:
                    return status
                status = await self.script(line.decode("utf-8", "replace"), std, status)
        except _ShellExit as exc:
            return exc.code

    async def script(self, script: str, std: _Redirect, status: int = 0) -> int:
        try:
            segments = _split_script(script)
        except ValueError as exc:
            await std.err(f"sh: syntax error: {exc}\n".encode())
            return 2
        for connector, text in segments:
            if (connector == "&&" and status != 0) or (connector == "||" and status == 0):
                continue
            try:
                words = shlex.split(text)
            except ValueError as exc:
                await std.err(f"sh: syntax error: {exc}\n".encode())
                return 2
            if not words:
                continue
            words = [w.replace("$?", str(status)) for w in words]
            status = await self.simple_command(words, std)
        return status

    async def simple_command(self, words: list[str], std: _Redirect) -> int:
        out, err = std.out, std.err
        argv: list[str] = []

        async def discard(_: bytes) -> None:
            return None

        for word in words:
            if word in (">&2", "1>&2"):
                out = std.err
            elif word == "2>&1":
                err = out
            elif word in (">/dev/null", "1>/dev/null"):
                out = discard
            elif word == "2>/dev/null":
                err = discard
            else:
                argv.append(word)
        if not argv:
            return 0
        if argv[0] == "exit":
            try:
                code = int(argv[1]) if len(argv) > 1 else 0
            except ValueError:
                await err(f"sh: exit: Illegal number: {argv[1]}\n".encode())
                raise _ShellExit(2) from None
            raise _ShellExit(code & 0xFF)
        name = self.resolve(argv[0])
        if name is None:
            await err(f"sh: {argv[0]}: not found\n".encode())
            return 127
        return await self.command(name, argv[1:], _Redirect(out, err))


def _split_script(script: str) -> list[tuple[str, str]]:
    """Split on ``;``, newlines, ``&&`` and ``||`` outside quotes: (connector, command) pairs."""
    segments: list[tuple[str, str]] = []
    connector = ";"
    current: list[str] = []
    quote = ""
    i = 0
    while i < len(script):
        ch = script[i]
        if quote:
            if ch == "\\" and quote == '"' and i + 1 < len(script):
                current.append(script[i : i + 2])
                i += 2
                continue
            if ch == quote:
                quote = ""
            current.append(ch)
        elif ch in "'\"":
            quote = ch
            current.append(ch)
        elif ch == "\\" and i + 1 < len(script):
            current.append(script[i : i + 2])
            i += 2
            continue
        elif ch in ";\n" or script.startswith(("&&", "||"), i):
            op = script[i : i + 2] if ch in "&|" else ";"
            segments.append((connector, "".join(current)))
            connector, current = op, []
            i += len(op)
            continue
        elif script.startswith(">&", i):
            current.append(">&")
            i += 2
            continue
        elif ch in "|&<`(" or script.startswith("$(", i):
            raise ValueError(f"{ch!r} is not supported by the stand-in shell")
        else:
            current.append(ch)
        i += 1
    if quote:
        raise ValueError("unterminated quote")
    segments.append((connector, "".join(current)))
    return [(c, t) for c, t in segments if t.strip()]


async def _cmd_echo(proc: _Process, args: list[str], std: _Redirect) -> int:
    newline = True
    if args[:1] == ["-n"]:
        newline, args = False, args[1:]
    await std.out((" ".join(args) + ("\n" if newline else "")).encode())
    return 0


async def _cmd_cat(proc: _Process, args: list[str], std: _Redirect) -> int:
    status = 0
    for name in args or ["-"]:
        if name == "-":
            while chunk := await proc.io.read():
                await std.out(chunk)
        elif name == "/etc/hostname":
            await std.out(f"{proc.pod_name}\n".encode())
        else:
            await std.err(f"cat: can't open '{name}': No such file or directory\n".encode())
            status = 1
    return status


async def _cmd_true(proc: _Process, args: list[str], std: _Redirect) -> int:
    return 0


async def _cmd_false(proc: _Process, args: list[str], std: _Redirect) -> int:
    return 1


async def _cmd_hostname(proc: _Process, args: list[str], std: _Redirect) -> int:
    await std.out(f"{proc.pod_name}\n".encode())
    return 0


async def _cmd_env(proc: _Process, args: list[str], std: _Redirect) -> int:
    if args:
        await std.err(b"env: running commands is not supported by the stand-in\n")
        return 125
    await std.out("".join(f"{k}={v}\n" for k, v in proc.environment()).encode())
    return 0


async def _cmd_sleep(proc: _Process, args: list[str], std: _Redirect) -> int:
    if not args:
        await std.err(b"sleep: missing operand\n")
        return 1
    try:
        seconds = sum(float(a) for a in args)
    except ValueError:
        await std.err(f"sleep: invalid number '{args[0]}'\n".encode())
        return 1
    await asyncio.sleep(max(0.0, seconds))
    return 0


async def _cmd_stty(proc: _Process, args: list[str], std: _Redirect) -> int:
    if not proc.io.tty:
        await std.err(b"stty: standard input: Not a tty\n")
        return 1
    if args == ["size"]:
        size = await proc.io.terminal.wait_size(1.0) or TerminalSize(0, 0)
        await std.out(f"{size.height} {size.width}\n".encode())
    return 0


_REAL_PROGRAMS: Final = frozenset({"tar", "test"})
"""Run for real in the container's root directory (what ``kubectl cp`` needs)."""

_COMMANDS: Final[dict[str, Callable[[_Process, list[str], _Redirect], Awaitable[int]]]] = {
    "echo": _cmd_echo,
    "cat": _cmd_cat,
    "true": _cmd_true,
    "false": _cmd_false,
    "hostname": _cmd_hostname,
    "env": _cmd_env,
    "sleep": _cmd_sleep,
    "stty": _cmd_stty,
}


async def run_command(
    argv: list[str],
    io: ProcessIO,
    pod: Mapping[str, Any],
    container: str,
    files: PodFilesystems | None = None,
) -> int:
    """Emulate ``argv`` in ``container`` of ``pod``; returns the exit code.

    Known programs (also under /bin, /usr/bin, …): ``echo [-n]``, ``cat [-|/etc/hostname]``,
    ``true``, ``false``, ``hostname``, ``env``, ``sleep N``, ``stty size`` (with a TTY) and
    ``sh``/``bash``/``ash`` (``-c SCRIPT``, or lines from stdin) running those plus ``exit N``,
    joined by ``;``, newlines, ``&&``, ``||``, with ``>&2``, ``2>&1`` and ``>/dev/null``.
    Anything else fails like a container runtime that cannot start it (the cri-dockerd wording,
    exit code 126); an unknown command inside ``sh`` is ``sh: X: not found``, 127.

    With ``files``, ``tar`` and ``test`` are the host's, run for real in the container's own
    root directory (:mod:`standin.pods`): what ``kubectl cp`` runs.
    """
    return await io.run(_Process(io, pod, container, files).run(argv))


async def run_attach(io: ProcessIO, pod: Mapping[str, Any], container: str) -> int:
    """The emulated attached container: a greeting line, then stdin echoed until it closes.

    The greeting waits for the first stdin bytes (or stdin's end): client-go's WebSocket
    client discards messages for a stream it has not created yet ("Unknown stream id,
    discarding message"), a race a real container's output seldom meets but a greeting
    sent at once did (about one ``kubectl attach`` in a hundred lost it).
    """
    meta = pod.get("metadata") or {}
    greeting = f"attached to {meta.get('namespace', '')}/{meta.get('name', '')} {container}\n"

    async def body() -> int:
        chunk = await io.read()
        await io.write(greeting.encode())
        while chunk:
            await io.write(chunk)
            chunk = await io.read()
        return 0

    return await io.run(body())


# ----------------------------------------------------------------------------- port emulation


class PortConnection(Protocol):
    async def read(self) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


_HTTP_METHODS: Final = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE")
_REQUEST_LINE = re.compile(rb"[A-Z]+ \S+ HTTP/\d\.\d\r?")


def _http_verdict(data: bytes) -> bool | None:
    """True if ``data`` starts an HTTP request, False if it cannot, None if too short to say."""
    undecided = False
    for method in _HTTP_METHODS:
        prefix = method + b" "
        if len(data) < len(prefix):
            undecided = undecided or prefix.startswith(data)
        elif data.startswith(prefix):
            end = data.find(b"\n")
            if end < 0:
                return None if len(data) < 8192 else False
            return _REQUEST_LINE.fullmatch(data[:end]) is not None
    return None if undecided else False


async def serve_port(pod: Mapping[str, Any], port: int, conn: PortConnection) -> None:
    """What listens on every port of an emulated pod.

    An HTTP request gets ``200 OK`` with ``hello from <pod> port <port>\\n`` and the connection
    is closed; any other bytes are echoed until the client closes its side.
    """
    data = b""
    verdict: bool | None = None
    while verdict is None:
        chunk = await conn.read()
        if not chunk:
            if data:
                await conn.write(data)
            return
        data += chunk
        verdict = _http_verdict(data)
    if not verdict:
        await conn.write(data)
        while chunk := await conn.read():
            await conn.write(chunk)
        return
    while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < 64 * 1024:
        chunk = await conn.read()
        if not chunk:
            break
        data += chunk
    name = (pod.get("metadata") or {}).get("name", "")
    body = f"hello from {name} port {port}\n".encode()
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    await conn.write(head if data.startswith(b"HEAD ") else head + body)


# ----------------------------------------------------------------------------- task helpers


async def _run_until_gone(work: Coroutine[Any, Any, _T], gone: asyncio.Future[Any]) -> _T | None:
    """Run ``work`` unless the client goes first (then cancel it and return None)."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.cancelled():
        return None
    exc = task.exception()
    if exc is None:
        return task.result()
    if isinstance(exc, ConnectionError):
        return None
    raise exc


async def _guarded(work: Coroutine[Any, Any, int], failure: str) -> int | str:
    """The exit code, or the message of an internal error (a bug in the emulation)."""
    try:
        return await work
    except ConnectionError:
        raise
    except Exception as exc:
        log.exception("%s", failure)
        return f"{failure}: {exc}"


async def _cancel(*tasks: asyncio.Future[Any] | None) -> None:
    pending = [t for t in tasks if t is not None and not t.done()]
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


# ----------------------------------------------------------------------------- SPDY session


class SpdyStream:
    """One SPDY stream opened by the client."""

    def __init__(self, session: SpdySession, frame: spdy.SynStreamFrame) -> None:
        self.session = session
        self.id = frame.stream_id
        self.headers = frame.headers
        self.inbound = Inbound(on_consumed=session.consumed)
        self.local_closed = frame.unidirectional
        self.remote_closed = False
        self.was_reset = False

    def header(self, name: str) -> str | None:
        return spdy.header_value(self.headers, name)

    @property
    def stream_type(self) -> str | None:
        return self.header("streamType")

    def remote_fin(self) -> None:
        self.remote_closed = True
        self.inbound.feed_eof()
        self.session.forget_if_done(self)

    async def write(self, data: bytes) -> None:
        """Send ``data`` (dropped once this side is closed or the stream reset, like a pipe)."""
        for start in range(0, len(data), DATA_CHUNK):
            if self.local_closed or self.was_reset:
                return
            await self.session.send(spdy.DataFrame(self.id, data[start : start + DATA_CHUNK]))

    async def close(self) -> None:
        """Half-close: an empty DATA frame with FIN, as spdystream's ``Stream.Close``."""
        if self.local_closed or self.was_reset:
            return
        self.local_closed = True
        await self.session.send(spdy.DataFrame(self.id, b"", fin=True))
        self.session.forget_if_done(self)

    def reset(self, status: int = spdy.RstStatus.CANCEL) -> None:
        if self.was_reset:
            return
        self.was_reset = self.local_closed = self.remote_closed = True
        self.inbound.discard()
        self.session.queue(spdy.RstStreamFrame(self.id, status))
        self.session.forget_if_done(self)


StreamAcceptor = Callable[[SpdyStream], str | None]
"""Judges a new stream: None accepts it, a string is why it is reset (RST_STREAM CANCEL)."""


class SpdySession:
    """The server end of a SPDY/3.1 session over any byte pipe (raw TCP/TLS or WebSocket).

    Received bytes go to :meth:`receive`; the client's EOF to :meth:`receive_eof`.  Frames are
    written, in encoding order, by one writer task through ``send_bytes``.  New client streams
    are replied to at once (as spdystream does) and handed out through :attr:`new_streams`,
    which yields None once the client is gone.
    """

    def __init__(
        self,
        send_bytes: Callable[[bytes], Awaitable[None]],
        *,
        acceptor: StreamAcceptor | None = None,
        pause_reading: Callable[[], None] | None = None,
        resume_reading: Callable[[], None] | None = None,
    ) -> None:
        self._send_bytes = send_bytes
        self._acceptor = acceptor
        self._pause_reading = pause_reading
        self._resume_reading = resume_reading
        self._decoder = spdy.FrameDecoder()
        self._encoder = spdy.FrameEncoder()
        self.streams: dict[int, SpdyStream] = {}
        self.new_streams: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self.closed = asyncio.Event()
        """The client is gone: EOF, GOAWAY, a protocol error or a failed write."""
        self.last_stream_id = 0
        self.goaway_sent = False
        self.pings_answered = 0
        self._out: deque[bytes] = deque()
        self._out_bytes = 0
        self._out_ready = asyncio.Event()
        self._out_room = asyncio.Event()
        self._out_room.set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._write_failed = False
        self._buffered_in = 0
        self._reading_paused = False
        self._receive_room = asyncio.Event()
        self._receive_room.set()
        self._writer = asyncio.ensure_future(self._write_loop())

    # -- receiving ------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Feed bytes from the client (called from the transport's callback: never raises)."""
        if self.closed.is_set():
            return
        try:
            self._decoder.receive_data(data)
            for frame in self._decoder:
                self._handle(frame)
                if self.closed.is_set():
                    return
        except spdy.SpdyError as exc:
            log.info("SPDY protocol error from client: %s", exc)
            self._abort(exc.status)
        except Exception:
            log.exception("SPDY session failed")
            self._abort(spdy.GoAwayStatus.INTERNAL_ERROR)

    def _abort(self, status: int) -> None:
        if not self.goaway_sent:
            self.goaway_sent = True
            self.queue(spdy.GoAwayFrame(self.last_stream_id, status))
        self._client_gone()

    def receive_eof(self) -> None:
        self._client_gone()

    def _client_gone(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for stream in list(self.streams.values()):
            stream.remote_closed = True
            stream.inbound.feed_eof()
        self.new_streams.put_nowait(None)
        self._resume()

    def _handle(self, frame: spdy.Frame) -> None:
        match frame:
            case spdy.SynStreamFrame(stream_id=stream_id):
                if stream_id % 2 == 0 or stream_id <= self.last_stream_id:
                    self.queue(spdy.RstStreamFrame(stream_id, spdy.RstStatus.PROTOCOL_ERROR))
                    return
                self.last_stream_id = stream_id
                if self.goaway_sent:
                    return
                stream = SpdyStream(self, frame)
                reason = self._acceptor(stream) if self._acceptor is not None else None
                if reason is not None:
                    log.info("rejecting SPDY stream %d: %s", stream_id, reason)
                    self.queue(spdy.RstStreamFrame(stream_id, spdy.RstStatus.CANCEL))
                    return
                self.streams[stream_id] = stream
                self.queue(spdy.SynReplyFrame(stream_id))
                if frame.fin:
                    stream.remote_fin()
                self.new_streams.put_nowait(stream)
            case spdy.DataFrame(stream_id=stream_id, data=data, fin=fin):
                found = self.streams.get(stream_id)
                if found is None or found.remote_closed:
                    return
                if data:
                    self._buffered_in += len(data)
                    found.inbound.feed(data)
                    if self._buffered_in > 4 * INBOUND_LIMIT:
                        self._pause()
                if fin:
                    found.remote_fin()
            case spdy.HeadersFrame(stream_id=stream_id, fin=True):
                if (found := self.streams.get(stream_id)) is not None:
                    found.remote_fin()
            case spdy.RstStreamFrame(stream_id=stream_id):
                if (found := self.streams.pop(stream_id, None)) is not None:
                    found.was_reset = found.local_closed = found.remote_closed = True
                    found.inbound.feed_eof()
            case spdy.PingFrame(ping_id=ping_id):
                if ping_id & 1:  # client-initiated: echo it
                    self.pings_answered += 1
                    self.queue(frame)
            case spdy.GoAwayFrame():
                self._client_gone()
            case _:
                pass  # SETTINGS, WINDOW_UPDATE (spdystream has no flow control), unknown types

    def consumed(self, count: int) -> None:
        self._buffered_in -= count
        if self._buffered_in < INBOUND_LIMIT:
            self._resume()

    def _pause(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self._receive_room.clear()
            if self._pause_reading is not None:
                self._pause_reading()

    def _resume(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self._receive_room.set()
            if self._resume_reading is not None:
                self._resume_reading()

    async def wait_receive_room(self) -> None:
        """For pull-style transports: wait while too much received data is still unread."""
        await self._receive_room.wait()

    def forget_if_done(self, stream: SpdyStream) -> None:
        if stream.local_closed and stream.remote_closed:
            self.streams.pop(stream.id, None)

    # -- sending --------------------------------------------------------------------------

    def queue(self, frame: spdy.Frame) -> None:
        """Encode ``frame`` now (header compression is order-dependent) and queue it."""
        if self._write_failed:
            return
        data = self._encoder.encode(frame)
        self._out.append(data)
        self._out_bytes += len(data)
        self._out_ready.set()
        self._drained.clear()
        if self._out_bytes > OUTBOUND_LIMIT:
            self._out_room.clear()

    async def send(self, frame: spdy.Frame) -> None:
        """Queue ``frame``, then wait while too much is queued."""
        self.queue(frame)
        await self._out_room.wait()

    async def _write_loop(self) -> None:
        try:
            while True:
                while not self._out:
                    self._drained.set()
                    self._out_ready.clear()
                    await self._out_ready.wait()
                data = self._out.popleft()
                await self._send_bytes(data)
                self._out_bytes -= len(data)
                if self._out_bytes <= OUTBOUND_LIMIT:
                    self._out_room.set()
        except (ConnectionError, OSError, RuntimeError) as exc:  # transport closed or closing
            log.debug("SPDY session write failed: %r", exc)
            self._write_failed = True
            self._out.clear()
            self._out_room.set()
            self._drained.set()
            self._client_gone()

    async def finish(self, timeout: float | None = None) -> None:
        """Send GOAWAY, flush, and give the client ``timeout`` seconds to hang up."""
        timeout = FINISH_TIMEOUT if timeout is None else timeout
        if not self.goaway_sent:
            self.goaway_sent = True
            self.queue(spdy.GoAwayFrame(self.last_stream_id, spdy.GoAwayStatus.OK))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._drained.wait()
                await self.closed.wait()

    async def aclose(self) -> None:
        """Stop the writer (after :meth:`finish`, or when the connection is already gone)."""
        self._client_gone()
        await _cancel(self._writer)


async def _accept_spdy(
    request: web.Request, protocol: str, acceptor: StreamAcceptor | None = None
) -> tuple[RawUpgrade, SpdySession]:
    """Answer 101 for a SPDY/3.1 upgrade and start a session on the raw connection."""
    conn = RawUpgrade(request)
    session = SpdySession(
        conn.write,
        acceptor=acceptor,
        pause_reading=conn.pause_reading,
        resume_reading=conn.resume_reading,
    )
    conn.on_data = session.receive
    conn.on_eof = session.receive_eof
    headers = {"Connection": "Upgrade", "Upgrade": "SPDY/3.1"}
    if protocol:
        headers[HEADER_PROTOCOL_VERSION] = protocol
    try:
        await conn.accept(headers)
    except BaseException:
        await session.aclose()
        raise
    return conn, session


def _spdy_handshake(request: web.Request, server_protocols: tuple[str, ...]) -> str | web.Response:
    """``httpstream.Handshake`` then the upgrader's header check: a protocol or an error."""
    client = _header_values(request, HEADER_PROTOCOL_VERSION)
    if not client:
        return _http_error(400, f"unable to upgrade: {HEADER_PROTOCOL_VERSION} is required")
    protocol = negotiate_stream_protocol(client, server_protocols)
    if protocol is None:
        message = (
            "unable to upgrade: unable to negotiate protocol: client supports "
            f"{_go_list(client)}, server accepts {_go_list(list(server_protocols))}"
        )
        accepted = [(HEADER_ACCEPTED_PROTOCOL_VERSIONS, p) for p in server_protocols]
        response = _http_error(403, message)
        for name, value in accepted:
            response.headers.add(name, value)
        return response
    upgrade = request.headers.get(hdrs.UPGRADE, "").lower()
    if "spdy/3.1" not in upgrade:
        shown = ", ".join(f'"{k}":[]string{{"{v}"}}' for k, v in request.headers.items())
        return _http_error(
            400, f"unable to upgrade: missing upgrade headers in request: http.Header{{{shown}}}"
        )
    return protocol


# ----------------------------------------------------------------------------- exec / attach


@dataclass(frozen=True)
class StreamOptions:
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


ProcessFactory = Callable[[ProcessIO], Coroutine[Any, Any, int | str]]
"""Starts the emulated process; it returns an exit code or an internal error's message."""


def _status_message(style: str, argv: list[str] | None, outcome: int | str) -> bytes | None:
    """What goes on the error stream once the process ended (an exit code or an error)."""
    if isinstance(outcome, str):
        if style == "v5":  # the translator wraps the kubelet's message once more
            outcome = f"Internal error occurred: {outcome}"
        status = _internal_error_status(outcome)
        return status["message"].encode() if style == "v1" else _json(status)
    code = outcome
    if code == 0:
        return None if style == "v1" else _json(_SUCCESS)
    if style == "v5":  # the apiserver's translator re-wraps the client-side ExitError
        message = f"command terminated with exit code {code}"
    else:
        message = f"error executing command {_go_list(argv or [])}, exit code {code}"
    message = f"command terminated with non-zero exit code: {message}"
    if style == "v1":
        return message.encode()
    return _json(_exit_status(code, message))


async def _serve_remotecommand(
    request: web.Request, opts: StreamOptions, process: ProcessFactory, argv: list[str] | None
) -> web.StreamResponse:
    if not is_upgrade_request(request):
        return _api_status_response(400, "BadRequest", "Upgrade request required")
    if not (opts.stdin or opts.stdout or opts.stderr):
        return _http_error(400, "you must specify at least 1 of stdin, stdout, stderr")
    if is_websocket_request(request):
        offered = _header_values(request, hdrs.SEC_WEBSOCKET_PROTOCOL)
        protocol = negotiate_websocket_remotecommand(offered)
        if protocol is None:
            return web.Response(status=403)
        return await _ws_remotecommand(request, opts, protocol, process, argv)
    negotiated = _spdy_handshake(request, SUPPORTED_STREAMING_PROTOCOLS)
    if isinstance(negotiated, web.Response):
        return negotiated
    return await _spdy_remotecommand(request, opts, negotiated, process, argv)


class _WsChannels:
    """The channel framing of ``channel.k8s.io`` and friends over an aiohttp WebSocket."""

    def __init__(self, ws: web.WebSocketResponse, *, base64_mode: bool, close_signal: bool):
        self.ws = ws
        self.base64 = base64_mode
        self.close_signal = close_signal

    async def send(self, channel: int, data: bytes) -> None:
        if self.base64:
            await self.ws.send_str(chr(ord("0") + channel) + base64.b64encode(data).decode())
        else:
            await self.ws.send_bytes(bytes((channel,)) + data)

    async def read_loop(self, readable: Mapping[int, Inbound], channels: int) -> None:
        """Dispatch client messages until the connection closes (then EOF every channel)."""
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.BINARY:
                    data: bytes = msg.data
                elif msg.type == WSMsgType.TEXT:
                    data = msg.data.encode()
                else:
                    continue
                if not data:
                    continue
                if self.close_signal and data[0] == STREAM_CLOSE:
                    if len(data) != 2 or data[1] >= channels:
                        log.info("bad CLOSE signal %r; closing the connection", data)
                        return
                    if (target := readable.get(data[1])) is not None:
                        target.feed_eof()
                    continue
                channel = (data[0] - ord("0")) & 0xFF if self.base64 else data[0]
                payload = data[1:]
                if self.base64:
                    try:
                        payload = base64.b64decode(payload, validate=True)
                    except (binascii.Error, ValueError):
                        continue
                target = readable.get(channel)
                if target is not None and payload:
                    target.feed(payload)
                    await target.wait_room()
        finally:
            for target in readable.values():
                target.feed_eof()


async def _prepare_websocket(request: web.Request, protocol: str) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(
        protocols=(protocol,) if protocol else (),
        compress=False,
        max_msg_size=MAX_WS_MESSAGE,
        timeout=FINISH_TIMEOUT,
    )
    if protocol:
        # Set it ourselves too: aiohttp only looks at the first Sec-WebSocket-Protocol line.
        ws.headers[hdrs.SEC_WEBSOCKET_PROTOCOL] = protocol
    await ws.prepare(request)
    return ws


async def _ws_remotecommand(
    request: web.Request,
    opts: StreamOptions,
    protocol: str,
    process: ProcessFactory,
    argv: list[str] | None,
) -> web.StreamResponse:
    spec = _WS_V5 if protocol == STREAM_PROTOCOL_V5 else _WS_REMOTECOMMAND[protocol]
    ws = await _prepare_websocket(request, protocol)
    channels = _WsChannels(ws, base64_mode=spec.base64, close_signal=protocol == STREAM_PROTOCOL_V5)
    stdin = Inbound() if opts.stdin else None
    resize = Inbound()
    readable = {0: stdin, 4: resize} if stdin is not None else {4: resize}
    terminal = Terminal()
    reader: asyncio.Task[None] | None = None
    pump: asyncio.Task[None] | None = None
    try:
        # "an empty message to the lowest writable channel" tells the client it is connected
        await channels.send(1 if opts.stdout else 2 if opts.stderr else 3, b"")
        reader = asyncio.ensure_future(channels.read_loop(readable, 5))
        if opts.tty:
            pump = asyncio.ensure_future(_pump_resizes(resize, terminal))

        def channel_writer(channel: int) -> Writer:
            async def write(data: bytes) -> None:
                await channels.send(channel, data)

            return write

        io = ProcessIO(
            stdin=stdin,
            stdout=channel_writer(1) if opts.stdout else None,
            stderr=channel_writer(2) if opts.stderr else None,
            tty=opts.tty,
            terminal=terminal,
        )
        await asyncio.sleep(WS_PROCESS_START_DELAY)
        outcome = await _run_until_gone(process(io), reader)
        if outcome is not None and not ws.closed:
            for inbound in readable.values():
                inbound.discard()
            status = _status_message(spec.status_style, argv, outcome)
            with contextlib.suppress(ConnectionError):
                if status is not None:
                    await channels.send(3, status)
                await ws.close()
    except ConnectionError as exc:
        log.debug("websocket client went away: %r", exc)
    finally:
        await _cancel(reader, pump)
        if not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
    return ws


async def _spdy_remotecommand(
    request: web.Request,
    opts: StreamOptions,
    protocol: str,
    process: ProcessFactory,
    argv: list[str] | None,
) -> web.StreamResponse:
    conn, session = await _accept_spdy(request, protocol)
    resizing = protocol not in (STREAM_PROTOCOL_V1, STREAM_PROTOCOL_V2)
    expected = 1 + opts.stdin + opts.stdout + opts.stderr + (opts.tty and resizing)
    streams: dict[str, SpdyStream] = {}
    pump: asyncio.Task[None] | None = None
    try:
        received = 0
        async with asyncio.timeout(STREAM_CREATION_TIMEOUT):
            while received < expected:
                stream = await session.new_streams.get()
                if stream is None:
                    return conn.response
                kind = stream.stream_type or ""
                known = ("error", "stdin", "stdout", "stderr") + (("resize",) if resizing else ())
                if kind not in known:
                    log.info("unexpected stream type: %r", kind)
                    continue
                streams[kind] = stream
                received += 1
        error = streams.get("error")
        if protocol == STREAM_PROTOCOL_V1:
            # What 1.0 kubelets did: reset the error stream and close stdin straight away.
            if error is not None:
                error.reset()
            if "stdin" in streams:
                await streams["stdin"].close()
        terminal = Terminal()
        if "resize" in streams and opts.tty:
            pump = asyncio.ensure_future(_pump_resizes(streams["resize"].inbound, terminal))

        def stream_writer(kind: str) -> Writer | None:
            return streams[kind].write if kind in streams else None

        io = ProcessIO(
            stdin=streams["stdin"].inbound if "stdin" in streams else None,
            stdout=stream_writer("stdout"),
            stderr=stream_writer("stderr"),
            tty=opts.tty,
            terminal=terminal,
        )
        gone = asyncio.ensure_future(session.closed.wait())
        try:
            outcome = await _run_until_gone(process(io), gone)
        finally:
            await _cancel(gone)
        if outcome is None:
            return conn.response
        style = "v4" if protocol in (STREAM_PROTOCOL_V4, STREAM_PROTOCOL_V5) else "v1"
        status = _status_message(style, argv, outcome)
        for kind in ("stdout", "stderr"):
            if kind in streams:
                await streams[kind].close()
        if error is not None:
            if status is not None:
                await error.write(status)
            await error.close()
        for kind in ("stdin", "resize"):
            if kind in streams:
                streams[kind].inbound.discard()
                await streams[kind].close()
        await session.finish()
    except TimeoutError:
        log.info("timed out waiting for client to create streams")
        await session.finish(0)
    except ConnectionError as exc:
        log.debug("SPDY client went away: %r", exc)
    finally:
        await _cancel(pump)
        await session.aclose()
        conn.close()
    return conn.response


async def serve_exec(
    request: web.Request,
    pod: dict[str, Any],
    command: list[str],
    container: str,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
    files: PodFilesystems | None = None,
) -> web.StreamResponse:
    """Serve ``pods/exec`` for an authorised request: upgrade, run the emulated command
    (``tar`` and ``test`` for real in the container's root directory under ``files``)."""
    opts = StreamOptions(stdin=stdin, stdout=stdout, stderr=stderr and not tty, tty=tty)

    def process(io: ProcessIO) -> Coroutine[Any, Any, int | str]:
        work = run_command(list(command), io, pod, container, files)
        return _guarded(work, "error executing command in container")

    return await _serve_remotecommand(request, opts, process, list(command))


async def serve_attach(
    request: web.Request,
    pod: dict[str, Any],
    container: str,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> web.StreamResponse:
    """Serve ``pods/attach``: a greeting line, then stdin echoed to stdout until it closes."""
    opts = StreamOptions(stdin=stdin, stdout=stdout, stderr=stderr and not tty, tty=tty)

    def process(io: ProcessIO) -> Coroutine[Any, Any, int | str]:
        return _guarded(run_attach(io, pod, container), "error attaching to container")

    return await _serve_remotecommand(request, opts, process, None)


# ----------------------------------------------------------------------------- port-forward


async def serve_portforward(
    request: web.Request, pod: dict[str, Any], ports: list[int]
) -> web.StreamResponse:
    """Serve ``pods/portforward``.

    ``ports`` are the request's ``ports`` query values; only the kubelet's channel-per-port
    WebSocket protocol uses them (SPDY clients name the port on every stream).
    """
    if not is_upgrade_request(request):
        return _api_status_response(400, "BadRequest", "Upgrade request required")
    if is_websocket_request(request):
        offered = _header_values(request, hdrs.SEC_WEBSOCKET_PROTOCOL)
        tunneled = tunneled_spdy_protocols(offered)
        if tunneled:
            protocol = negotiate_stream_protocol(tunneled, SUPPORTED_PORT_FORWARD_PROTOCOLS)
            if protocol is None:
                message = (
                    "unable to upgrade: unable to negotiate protocol: client supports "
                    f"{_go_list(tunneled)}, server accepts "
                    f"{_go_list(list(SUPPORTED_PORT_FORWARD_PROTOCOLS))}"
                )
                response = _http_error(403, message)
                for p in SUPPORTED_PORT_FORWARD_PROTOCOLS:
                    response.headers.add(HEADER_ACCEPTED_PROTOCOL_VERSIONS, p)
                return response
            return await _tunneled_portforward(request, pod, protocol)
        if not ports:
            return _http_error(400, 'query parameter "port" is required')
        chosen = next((p for p in offered or [""] if p in _WS_PORTFORWARD), None)
        if chosen is None:
            return web.Response(status=403)
        return await _ws_portforward(request, pod, ports, chosen)
    negotiated = _spdy_handshake(request, SUPPORTED_PORT_FORWARD_PROTOCOLS)
    if isinstance(negotiated, web.Response):
        return negotiated
    conn, session = await _accept_spdy(request, negotiated, _validate_portforward_stream)
    try:
        await _portforward_session(session, pod)
    finally:
        await session.aclose()
        conn.close()
    return conn.response


def _validate_portforward_stream(stream: SpdyStream) -> str | None:
    """``httpStreamReceived``: a valid port and stream type, or the reason to reset."""
    port = stream.header("port")
    if not port:
        return '"port" header is required'
    if not port.isdigit() or int(port) > 65535:
        return f"unable to parse {port!r} as a port"
    if int(port) < 1:
        return f"port {port!r} must be > 0"
    kind = stream.stream_type
    if not kind:
        return '"streamType" header is required'
    if kind not in ("error", "data"):
        return f"invalid stream type {kind!r}"
    return None


class _SpdyPortConnection:
    def __init__(self, stream: SpdyStream) -> None:
        self.stream = stream

    async def read(self) -> bytes:
        return await self.stream.inbound.read()

    async def write(self, data: bytes) -> None:
        await self.stream.write(data)


@dataclass
class _StreamPair:
    request_id: str
    data: SpdyStream | None = None
    error: SpdyStream | None = None
    monitor: asyncio.Task[None] | None = None


async def _forward_pair(pair: _StreamPair, pod: Mapping[str, Any]) -> None:
    assert pair.data is not None and pair.error is not None
    port = int(pair.data.header("port") or 0)
    try:
        await serve_port(pod, port, _SpdyPortConnection(pair.data))
    except ConnectionError:
        return
    finally:
        with contextlib.suppress(ConnectionError):
            await pair.error.close()
            await pair.data.close()


async def _portforward_session(session: SpdySession, pod: Mapping[str, Any]) -> None:
    """The kubelet's ``httpStreamHandler``: pair streams by request ID and forward each pair."""
    pairs: dict[str, _StreamPair] = {}
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    async def monitor(pair: _StreamPair) -> None:
        await asyncio.sleep(STREAM_CREATION_TIMEOUT)
        if pairs.get(pair.request_id) is pair:
            del pairs[pair.request_id]
            if pair.error is not None:
                with contextlib.suppress(ConnectionError):
                    message = (
                        f"(conn=spdy, request={pair.request_id}) timed out waiting for streams"
                    )
                    await pair.error.write(message.encode())

    try:
        while (stream := await session.new_streams.get()) is not None:
            kind = stream.stream_type
            request_id = stream.header("requestID")
            if not request_id:  # clients before request IDs: derive one from the stream ID
                request_id = str(stream.id if kind == "error" else stream.id - 2)
            pair = pairs.get(request_id)
            if pair is None:
                pair = pairs[request_id] = _StreamPair(request_id)
                pair.monitor = spawn(monitor(pair))
            if getattr(pair, "error" if kind == "error" else "data") is not None:
                message = (
                    f"error processing stream for request {request_id}: "
                    f"{kind} stream already assigned"
                )
                if pair.error is not None:
                    spawn(pair.error.write(message.encode()))
                continue
            if kind == "error":
                pair.error = stream
            else:
                pair.data = stream
            if pair.error is not None and pair.data is not None:
                del pairs[request_id]
                if pair.monitor is not None:
                    pair.monitor.cancel()
                spawn(_forward_pair(pair, pod))
    finally:
        await _cancel(*tasks)


async def _tunneled_portforward(
    request: web.Request, pod: Mapping[str, Any], protocol: str
) -> web.StreamResponse:
    """kubectl 1.31+: SPDY frames inside WebSocket binary messages (``SPDY/3.1+…``)."""
    ws = await _prepare_websocket(request, SPDY_TUNNELING_PREFIX + protocol)
    session = SpdySession(ws.send_bytes, acceptor=_validate_portforward_stream)

    async def pump() -> None:
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    session.receive(msg.data)
                    if session.closed.is_set():
                        return
                    await session.wait_receive_room()
                elif msg.type == WSMsgType.TEXT:
                    log.info("text message on a SPDY tunnel; closing")
                    return
        finally:
            session.receive_eof()

    reader = asyncio.ensure_future(pump())
    try:
        await _portforward_session(session, pod)
    finally:
        await _cancel(reader)
        await session.aclose()
        if not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
    return ws


class _WsPortConnection:
    def __init__(self, inbound: Inbound, channels: _WsChannels, channel: int) -> None:
        self.inbound = inbound
        self.channels = channels
        self.channel = channel

    async def read(self) -> bytes:
        return await self.inbound.read()

    async def write(self, data: bytes) -> None:
        for start in range(0, len(data), DATA_CHUNK):
            await self.channels.send(self.channel, data[start : start + DATA_CHUNK])


async def _ws_portforward(
    request: web.Request, pod: Mapping[str, Any], ports: list[int], protocol: str
) -> web.StreamResponse:
    """The kubelet's WebSocket port-forward: channels 2i (data) and 2i+1 (error) per port."""
    ws = await _prepare_websocket(request, protocol)
    channels = _WsChannels(ws, base64_mode=_WS_PORTFORWARD[protocol], close_signal=False)
    inbound = {2 * i: Inbound() for i in range(len(ports))}
    reader: asyncio.Task[None] | None = None
    try:
        for i, port in enumerate(ports):
            prefix = struct.pack("<H", port & 0xFFFF)
            await channels.send(2 * i, prefix)
            await channels.send(2 * i + 1, prefix)
        reader = asyncio.ensure_future(channels.read_loop(inbound, 2 * len(ports)))

        async def forward_all() -> int:
            await asyncio.gather(
                *(
                    serve_port(pod, port, _WsPortConnection(inbound[2 * i], channels, 2 * i))
                    for i, port in enumerate(ports)
                )
            )
            return 0

        if await _run_until_gone(forward_all(), reader) is not None:
            await ws.close()
    except ConnectionError as exc:
        log.debug("websocket port-forward client went away: %r", exc)
    finally:
        await _cancel(reader)
        if not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
    return ws

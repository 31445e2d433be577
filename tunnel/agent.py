"""The agent: dials out to the gateway, holds the tunnel, relays streams to its API server.

Each stream the gateway opens becomes one TLS connection to this cluster's API
server, and bytes are copied both ways under the stream's credit window. The agent
never listens on a port, and nothing but its own API server is reachable through it.
It reconnects with capped exponential back-off and full jitter, so a gateway
restart does not turn into a handshake storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import socket
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp

from config.schema import AgentSettings
from config.tls import client_context
from tunnel.errors import TunnelError
from tunnel.frames import ErrorCode
from tunnel.protocol import Limits, Side
from tunnel.session import Session
from tunnel.streams import TunnelStream
from tunnel.transport import READ_LIMIT_BYTES, WebSocketTransport

logger = logging.getLogger(__name__)

VERSION = "0.1.0"
CONNECT_PATH = "/v3/connect"
UPSTREAM_CONNECT_TIMEOUT_S = 10.0
STABLE_AFTER_S = 30.0
"""A tunnel that lived this long resets the back-off to its initial delay."""
_HIGH_WATER = 256 * 1024


class AgentError(Exception):
    """The agent cannot start (bad CA checksum, unreadable kubeconfig ...)."""


@dataclass
class Upstream:
    """How to reach this cluster's API server."""

    host: str
    port: int
    ssl: ssl.SSLContext | None
    server_hostname: str | None
    authorization: str = field(default="", repr=False)
    ca_pem: str = ""
    """The API server's CA, reported to the gateway for direct (ACE) kubeconfig contexts."""
    refresh: Callable[[], asyncio.Future[str] | asyncio.Task[str]] | None = field(
        default=None, repr=False
    )

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# -- start-up: gateway CA and cluster credentials ---------------------------------------


async def gateway_ca(settings: AgentSettings) -> str | None:
    """The gateway CA to trust: from a file, or fetched and checked against the checksum."""
    if settings.ca_file:
        return Path(settings.ca_file).read_text()
    if not settings.ca_checksum:
        return None  # the gateway's certificate is publicly trusted
    insecure = client_context(verify=False)
    url = settings.server.rstrip("/") + "/cacerts"
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, ssl=insecure, timeout=aiohttp.ClientTimeout(total=15)) as resp,
        ):
            if resp.status != 200:
                raise AgentError(f"GET {url}: HTTP {resp.status}")
            pem = await resp.read()
    except aiohttp.ClientError as exc:
        raise AgentError(f"cannot fetch the gateway CA from {url}: {exc}") from exc
    actual = hashlib.sha256(pem).hexdigest()
    if not hmac.compare_digest(actual, settings.ca_checksum.strip().lower()):
        raise AgentError(
            f"the CA served by {settings.server} has checksum {actual}, "
            f"expected {settings.ca_checksum}: refusing to connect"
        )
    return pem.decode()


async def cluster_upstream(settings: AgentSettings) -> Upstream:
    """API server address, TLS and credential from a kubeconfig or the pod's service account."""
    from kubernetes_asyncio.client import Configuration
    from kubernetes_asyncio.config import (
        ConfigException,
        load_incluster_config,
        load_kube_config,
    )

    cfg = Configuration()
    try:
        if settings.kubeconfig:
            await load_kube_config(config_file=settings.kubeconfig, client_configuration=cfg)
        else:
            load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError) as exc:
        source = settings.kubeconfig or "the in-cluster service account"
        raise AgentError(f"cannot load cluster credentials from {source}: {exc}") from exc
    url = urlsplit(str(cfg.host))
    if url.hostname is None:
        raise AgentError(f"no API server address in {cfg.host!r}")
    ctx: ssl.SSLContext | None = None
    if url.scheme == "https":
        ctx = client_context(
            ca_file=cfg.ssl_ca_cert or None,
            cert_file=cfg.cert_file or None,
            key_file=cfg.key_file or None,
            verify=bool(cfg.verify_ssl),
        )
    server_hostname = str(getattr(cfg, "tls_server_name", None) or url.hostname)

    async def credential() -> str:
        auth = await cfg.auth_settings()
        value = auth.get("BearerToken", {}).get("value") or ""
        if value and not value.lower().startswith("bearer "):
            value = f"Bearer {value}"
        return str(value)

    upstream = Upstream(
        host=url.hostname,
        port=url.port or (443 if url.scheme == "https" else 80),
        ssl=ctx,
        server_hostname=server_hostname if ctx else None,
    )
    upstream.authorization = await credential()
    if cfg.ssl_ca_cert:
        try:
            upstream.ca_pem = Path(cfg.ssl_ca_cert).read_text()
        except OSError as exc:
            raise AgentError(f"cannot read the cluster CA {cfg.ssl_ca_cert}: {exc}") from exc
    upstream.refresh = lambda: asyncio.ensure_future(credential())
    return upstream


# -- relaying one stream ----------------------------------------------------------------


class _UpstreamConnection(asyncio.Protocol):
    """API server bytes -> tunnel stream, respecting the stream's credit."""

    def __init__(self, stream: TunnelStream) -> None:
        self.stream = stream
        self.transport: asyncio.Transport | None = None
        self._backlog: list[bytes] = []
        self._flushing: asyncio.Task[None] | None = None
        self._eof = False
        self.closed = asyncio.get_running_loop().create_future()
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport does not subclass asyncio.Transport; it has its API.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        stream = self.stream
        if not self._backlog and stream.can_write_now(len(data)):
            try:
                stream.write_nowait(data)
            except TunnelError:
                self._abort()
            return
        self._backlog.append(data)
        if self.transport is not None:
            self.transport.pause_reading()
        self._start_flush()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._start_flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._start_flush()
        if not self.closed.done():
            self.closed.set_result(None)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def drain(self) -> None:
        if self._write_paused and not self.closed.done():
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def _start_flush(self) -> None:
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._backlog:
                data = b"".join(self._backlog)
                self._backlog.clear()
                await self.stream.write(data)
            if self._eof:
                await self.stream.write_eof()
                return
        except TunnelError:
            self._abort()
            return
        finally:
            self._flushing = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def relay(stream: TunnelStream, session: Session, upstream: Upstream) -> None:
    """Connect the stream to the API server and copy bytes both ways."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(UPSTREAM_CONNECT_TIMEOUT_S):
            transport, conn = await loop.create_connection(
                lambda: _UpstreamConnection(stream),
                upstream.host,
                upstream.port,
                ssl=upstream.ssl,
                server_hostname=upstream.server_hostname,
            )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        logger.warning("cannot reach the API server %s: %s", upstream.host_header, exc)
        stream.reset(ErrorCode.CONNECT_FAILED, f"API server unreachable: {exc}")
        return
    session.accept(stream)
    try:
        while True:
            chunk = await stream.read()
            if not chunk:
                break
            transport.write(chunk)
            if transport.get_write_buffer_size() > _HIGH_WATER:
                await conn.drain()
            if transport.is_closing():
                break
        # The gateway finished this exchange: close the API server connection.
        if not transport.is_closing():
            transport.close()
        await asyncio.wait_for(asyncio.shield(conn.closed), 30)
    except TunnelError:
        transport.abort()
    except (TimeoutError, OSError):
        transport.abort()
        stream.reset(ErrorCode.INTERNAL_ERROR)


# -- the tunnel -------------------------------------------------------------------------


class Agent:
    def __init__(self, settings: AgentSettings, registration_token: str) -> None:
        self.settings = settings
        self._token = registration_token
        self._tasks: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()
        self.session: Session | None = None

    def _on_stream(self, session: Session, upstream: Upstream) -> Callable[[TunnelStream], None]:
        def handler(stream: TunnelStream) -> None:
            if stream.target not in (b"", b"apiserver"):
                stream.reset(ErrorCode.REFUSED_STREAM, "only the API server is reachable")
                return
            task = asyncio.get_running_loop().create_task(relay(stream, session, upstream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return handler

    def _metadata(self, upstream: Upstream) -> bytes:
        return json.dumps(
            {
                "version": VERSION,
                "node": self.settings.node_name,
                "apiHost": upstream.host_header,
                "authorization": upstream.authorization,
                "caCert": upstream.ca_pem,
            }
        ).encode()

    async def run_once(
        self, http: aiohttp.ClientSession, ca_pem: str | None, upstream: Upstream
    ) -> float:
        """One connection; returns how long it stayed up (0 if it never came up)."""
        settings = self.settings
        ctx = client_context(ca_data=ca_pem) if ca_pem else client_context()
        headers = {"Authorization": f"Bearer {self._token}"}
        if settings.node_name:
            headers["X-Herdgate-Node-Name"] = settings.node_name
        url = settings.server.rstrip("/") + CONNECT_PATH
        loop = asyncio.get_running_loop()
        try:
            ws = await http.ws_connect(
                url,
                headers=headers,
                ssl=ctx,
                max_msg_size=READ_LIMIT_BYTES,
                autoping=True,
                compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                logger.error("the gateway rejected the registration token (HTTP 401)")
            else:
                logger.warning("cannot connect to %s: HTTP %s", url, exc.status)
            return 0.0
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.warning("cannot connect to %s: %s", url, exc)
            return 0.0
        tunnel = settings.tunnel
        session = Session(
            WebSocketTransport(ws),
            Side.CLIENT,
            limits=Limits(tunnel.stream_window, tunnel.max_frame, tunnel.max_streams),
            metadata=self._metadata(upstream),
            ping_interval_s=tunnel.ping_interval_s,
            idle_timeout_s=tunnel.idle_timeout_s,
            name=settings.server,
        )
        session._on_stream = self._on_stream(session, upstream)
        try:
            await session.handshake()
        except TunnelError as exc:
            logger.warning("tunnel handshake with %s failed: %s", url, exc)
            await ws.close()
            return 0.0
        started = loop.time()
        session.start()
        self.session = session
        self.connected.set()
        logger.info("tunnel to %s established", settings.server)
        refresher = loop.create_task(self._refresh_credentials(session, upstream))
        try:
            closed = await session.wait_closed()
            logger.warning("tunnel to %s closed: %s", settings.server, closed)
        finally:
            refresher.cancel()
            self.connected.clear()
            self.session = None
            await ws.close()
        return loop.time() - started

    async def _refresh_credentials(self, session: Session, upstream: Upstream) -> None:
        while True:
            await asyncio.sleep(self.settings.credentials_refresh_s)
            if upstream.refresh is None:
                return
            try:
                value = await upstream.refresh()
            except Exception as exc:  # noqa: BLE001 - keep the tunnel, retry next period
                logger.warning("cannot refresh the API server credential: %s", exc)
                continue
            if value != upstream.authorization:
                upstream.authorization = value
                session.send_info(json.dumps({"authorization": value}).encode())
                logger.info("API server credential rotated")

    async def run(self, stop: asyncio.Event) -> None:
        ca_pem = await gateway_ca(self.settings)
        upstream = await cluster_upstream(self.settings)
        attempt = 0
        connector = aiohttp.TCPConnector(limit=1, enable_cleanup_closed=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            while not stop.is_set():
                uptime = await _until_stopped(self.run_once(http, ca_pem, upstream), stop)
                if stop.is_set():
                    break
                attempt = 0 if uptime >= STABLE_AFTER_S else attempt + 1
                delay = backoff_delay(
                    attempt, self.settings.backoff_initial_s, self.settings.backoff_max_s
                )
                logger.info("reconnecting in %.1f s", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        for task in list(self._tasks):
            task.cancel()


async def _until_stopped(coro: Coroutine[Any, Any, float], stop: asyncio.Event) -> float:
    task = asyncio.ensure_future(coro)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stopper.cancel()
        return float(task.result())
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0.0


def backoff_delay(
    attempt: int, initial_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Full jitter: uniform in [initial/2, min(max, initial * 2**attempt)]."""
    rng = rng or random.SystemRandom()
    ceiling = min(max_s, initial_s * (2 ** min(attempt, 30)))
    return rng.uniform(min(initial_s / 2, ceiling), ceiling)

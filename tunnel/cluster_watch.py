"""The agent follows its own cluster and reports its state to the gateway.

While a gateway replica wants reports (``tunnel.cluster_state.WANT_KEY``), the agent
probes its API server's ``/readyz`` and ``/version`` every interval (failing or not),
lists and watches nodes and namespaces (resuming from the last resourceVersion, with
bookmarks; listing again after ``410 Gone`` or "too large resource version"), with its
own credentials (the ``Upstream`` the relay uses; over the agent's HTTP/2 connections
when it has them, ``tunnel.h2upstream.Fetch``, else HTTP/1.1), and sends each wanting tunnel what
changed, at most once per ``MIN_INTERVAL_S``, plus an empty report as a heartbeat when
nothing changed for the heartbeat period. While ``/readyz`` fails the watches pause (a
dead API server is not hammered) and resume with a fresh list once it answers again: it
may have come back with other storage.

A tunnel that starts wanting reports gets a full snapshot, the others only changes
(``Reports``: each tunnel's last known state is the base of its next report).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp

from tunnel.cluster_state import (
    HEARTBEAT,
    MAX_NAMESPACES,
    MAX_NODES,
    MIN_INTERVAL_S,
    NAMESPACES,
    NODES,
    Backoff,
    Readiness,
    State,
    WatchTable,
    encode_reports,
    fit_version,
    node_summary,
    project_of,
    readiness,
)
from tunnel.credentials import Upstream
from tunnel.errors import TunnelError
from tunnel.h2upstream import Fetch, H2Pool, NoHttp2, request_headers
from tunnel.session import Session

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
LIST_TIMEOUT_S = 60.0
WATCH_TIMEOUT_S = 240
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
MAX_EVENT_BYTES = 16 * 1024 * 1024
PATHS = {NODES: "/api/v1/nodes", NAMESPACES: "/api/v1/namespaces"}


class Gone(Exception):
    """The watch's resourceVersion is gone (410) or newer than the server has: list again."""


async def follow(
    list_once: Callable[[], Awaitable[None]],
    watch_once: Callable[[], Awaitable[None]],
    relist_after: Callable[[Exception], bool],
    what: str,
) -> None:
    """List, then watch from the listed resourceVersion, for ever, as client-go's
    reflector does: after a watch the server ended, watch again from where it was; after
    ``Gone`` (or a failure ``relist_after`` says means the same) list again; after any
    other failure, the same step again after a backoff pause. Both the agent's reports
    (``ClusterWatch``) and the gateway's controller for agents that do not report follow
    their cluster's nodes and namespaces with this."""
    backoff = Backoff(BACKOFF_BASE_S, BACKOFF_CAP_S)
    listed = False
    while True:
        try:
            if not listed:
                await list_once()
                listed = True
                backoff.reset()
            await watch_once()
            backoff.reset()  # the server ended the watch: resume from where it was
        except asyncio.CancelledError:
            raise
        except Gone:
            listed = False
        except Exception as exc:  # noqa: BLE001 - retried after a pause
            logger.debug("%s: %s", what, _describe(exc))
            if relist_after(exc):
                listed = False
            await asyncio.sleep(backoff.next())


class HTTPFailure(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status
        self.text = text


class Reports:
    """Which tunnels want reports, and what each was last sent (its base)."""

    def __init__(self) -> None:
        self.bases: dict[Session, State | None] = {}
        self.sent = 0
        """INFO frames sent (tests and metrics)."""

    def want(self, session: Session) -> None:
        self.bases.setdefault(session, None)

    def drop(self, session: Session) -> None:
        self.bases.pop(session, None)

    def __bool__(self) -> bool:
        return bool(self.bases)

    def flush(self, current: State) -> bool:
        """Send each wanting tunnel what it lacks of ``current``; whether anything went."""
        went = False
        for session, base in list(self.bases.items()):
            if session.is_closed:
                del self.bases[session]
                continue
            payloads = encode_reports(base, current)
            if not payloads:
                continue
            try:
                for payload in payloads:
                    session.send_info(payload)
            except TunnelError:
                del self.bases[session]
                continue
            self.sent += len(payloads)
            self.bases[session] = current.copy()
            went = True
        return went

    def heartbeat(self) -> None:
        for session, base in list(self.bases.items()):
            if base is None or session.is_closed:
                continue
            with contextlib.suppress(TunnelError):
                session.send_info(HEARTBEAT)
                self.sent += 1


class ClusterWatch:
    """Probes and watches one API server while reports are wanted; ``run`` until cancelled."""

    def __init__(
        self,
        upstream: Upstream,
        reports: Reports,
        interval_s: float,
        heartbeat_s: float,
        user_agent: str,
        pool: H2Pool | None = None,
    ) -> None:
        self.upstream = upstream
        self.pool = pool
        """The agent's HTTP/2 connections to the API server (None: HTTP/1.1 only)."""
        self.reports = reports
        self.interval_s = interval_s
        self.heartbeat_s = heartbeat_s
        self.user_agent = user_agent
        self.ready: Readiness | None = None
        self.version: dict[str, Any] | None = None
        self.tables = {
            NODES: WatchTable(MAX_NODES, keep=node_summary),
            NAMESPACES: WatchTable(MAX_NAMESPACES, keep=project_of),
        }
        self.listed: set[str] = set()
        self.dirty = asyncio.Event()
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._http: aiohttp.ClientSession | None = None

    def state(self) -> State:
        tables = self.tables
        return State(
            self.ready,
            self.version,
            dict(tables[NODES].items),
            dict(tables[NAMESPACES].items),
            frozenset(self.listed),
            frozenset(kind for kind, table in tables.items() if table.truncated),
        )

    def changed(self) -> None:
        self.dirty.set()

    # -- running ----------------------------------------------------------------------

    async def run(self) -> None:
        scheme = "https" if self.upstream.ssl is not None else "http"
        self.base_url = f"{scheme}://{self.upstream.host_header}"
        connector = aiohttp.TCPConnector(
            ssl=self.upstream.ssl if self.upstream.ssl is not None else False, limit=8
        )
        self._http = aiohttp.ClientSession(connector=connector)
        publisher = asyncio.create_task(self._publish_loop())
        try:
            await self._probe_loop()
        finally:
            publisher.cancel()
            self._pause_watches()
            tasks = [publisher, *self._watches.values()]
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._http.close()

    async def _publish_loop(self) -> None:
        """Send what changed, at most once per ``MIN_INTERVAL_S``; a heartbeat when
        nothing did for ``heartbeat_s``."""
        loop = asyncio.get_running_loop()
        last_sent = -MIN_INTERVAL_S
        while True:
            try:
                async with asyncio.timeout(self.heartbeat_s):
                    await self.dirty.wait()
            except TimeoutError:
                self.reports.heartbeat()
                last_sent = loop.time()
                continue
            await asyncio.sleep(max(0.0, last_sent + MIN_INTERVAL_S - loop.time()))
            self.dirty.clear()
            if self.ready is None:
                continue  # nothing known yet: the first probe sets dirty again
            if self.reports.flush(self.state()):
                last_sent = loop.time()

    async def _probe_loop(self) -> None:
        # Every interval, failing or not: a failure is reported at once, a recovery within
        # the interval, and a dead API server is asked once per interval, no more.
        while True:
            await self.probe()
            await asyncio.sleep(self.interval_s)

    async def probe(self) -> bool:
        """One ``/readyz`` (and, when ready, ``/version``) round; whether ready."""
        try:
            status, body = await self._get("/readyz", PROBE_TIMEOUT_S)
            result = (
                readiness(True, "APIServerReady", "/readyz: ok")
                if status == 200
                else _failure(status, body)
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            result = readiness(False, "ProbeFailed", _describe(exc))
        was = self.ready
        if result != was:
            self.ready = result
            self.changed()
        if not result.ok:
            self._pause_watches()
            return False
        if was is None or not was.ok:
            self._start_watches()  # first time, or back: list afresh
        try:
            status, body = await self._get("/version", PROBE_TIMEOUT_S)
            doc = json.loads(body) if status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            doc = None
        if isinstance(doc, dict):
            version = fit_version(doc)
            if version != self.version:
                self.version = version
                self.changed()
        return True

    def _start_watches(self) -> None:
        self._pause_watches()
        for kind in (NODES, NAMESPACES):
            self._watches[kind] = asyncio.create_task(self._follow(kind))

    def _pause_watches(self) -> None:
        for task in self._watches.values():
            task.cancel()
        self._watches.clear()

    # -- HTTP -------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": self.user_agent, "Accept": "application/json"}
        if self.upstream.authorization:
            headers["Authorization"] = self.upstream.authorization
        return headers

    def _kwargs(self) -> dict[str, Any]:
        if self.upstream.ssl is not None and self.upstream.server_hostname:
            return {"server_hostname": self.upstream.server_hostname}
        return {}

    def _h2(self) -> H2Pool | None:
        pool = self.pool
        return pool if pool is not None and not pool.refused else None

    async def _get(self, path: str, timeout_s: float) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout_s), self._open(path) as (status, body):
            content = bytearray()
            async for piece in body:
                content += piece
                if len(content) > MAX_EVENT_BYTES * 4:
                    raise OSError(f"{path}: an answer larger than {MAX_EVENT_BYTES * 4} bytes")
            return status, bytes(content)

    @contextlib.asynccontextmanager
    async def _open(self, path: str) -> AsyncIterator[tuple[int, AsyncIterator[bytes]]]:
        """GET ``path`` (with its query): the status and the body as it comes; over
        HTTP/2 when the agent has it, else (or when the API server does not offer it)
        HTTP/1.1. Failures are ``OSError``, ``aiohttp.ClientError`` or ``TimeoutError``."""
        pool = self._h2()
        if pool is not None:
            fetch = Fetch()
            try:
                head = request_headers(self.upstream, path, list(self._headers().items()))
                status = await fetch.open(pool, head)
            except NoHttp2:
                fetch.close()
            else:
                try:
                    yield status, fetch.chunks()
                finally:
                    fetch.close()
                return
        assert self._http is not None
        async with self._http.get(
            self.base_url + path,
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=PROBE_TIMEOUT_S),
            **self._kwargs(),
        ) as response:
            yield response.status, response.content.iter_any()

    # -- list and watch ---------------------------------------------------------------

    async def _follow(self, kind: str) -> None:
        table = self.tables[kind]
        await follow(
            lambda: self._list(kind, table),
            lambda: self._watch(kind, table),
            lambda exc: isinstance(exc, HTTPFailure) and exc.status == 410,
            kind,
        )

    async def _list(self, kind: str, table: WatchTable) -> None:
        status, body = await self._get(PATHS[kind], LIST_TIMEOUT_S)
        if status == 410:
            raise Gone(kind)
        if status != 200:
            raise HTTPFailure(status, body[:200].decode("utf-8", "replace"))
        doc = json.loads(body)
        items = doc.get("items") if isinstance(doc, dict) else None
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        version = meta.get("resourceVersion") if isinstance(meta, dict) else ""
        table.replace(items if isinstance(items, list) else [], str(version or ""))
        self.listed.add(kind)
        self.changed()

    async def _watch(self, kind: str, table: WatchTable) -> None:
        query = urlencode(
            {
                "watch": "true",
                "resourceVersion": table.resource_version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(WATCH_TIMEOUT_S),
            }
        )
        async with (
            asyncio.timeout(WATCH_TIMEOUT_S + 30),
            self._open(f"{PATHS[kind]}?{query}") as (status, body),
        ):
            if status == 410:
                raise Gone(kind)
            if status != 200:
                start = bytearray()
                async for piece in body:
                    start += piece
                    if len(start) >= 4096:
                        break
                text = start[:4096].decode("utf-8", "replace")
                if status == 504 and "too large resource version" in text.lower():
                    raise Gone(kind)
                raise HTTPFailure(status, text[:200])
            buffer = b""
            async for piece in body:
                buffer += piece
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        self._event(table, json.loads(line))
                if len(buffer) > MAX_EVENT_BYTES:
                    raise RuntimeError("a watch event larger than 16 MiB")

    def _event(self, table: WatchTable, event: Any) -> None:
        if not isinstance(event, Mapping):
            return
        kind = str(event.get("type") or "")
        item = event.get("object")
        if not isinstance(item, Mapping):
            return
        if kind == "ERROR":
            if item.get("code") == 410 or _too_large(item):
                raise Gone(str(item.get("message") or "gone"))
            raise RuntimeError(f"watch error: {item.get('message')}")
        if table.event(kind, item):
            self.changed()


def _too_large(status: Mapping[str, Any]) -> bool:
    """kube-apiserver's answer to a watch from a resourceVersion it has not reached."""
    return (
        status.get("code") == 504
        and "too large resource version" in str(status.get("message") or "").lower()
    )


def _failure(status: int, body: bytes) -> Readiness:
    """A failed ``/readyz``: the Kubernetes Status's reason, else the HTTP status and the
    first line of the body."""
    text = body[:4096].decode("utf-8", "replace")
    try:
        doc = json.loads(text) if text.strip() else None
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("kind") == "Status":
        reason = str(doc.get("reason") or "") or f"HTTP{status}"
        return readiness(False, reason, str(doc.get("message") or ""))
    first = text.strip().splitlines()[0] if text.strip() else ""
    return readiness(False, f"HTTP{status}", f"/readyz answered {status}: {first}")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:512]

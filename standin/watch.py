"""Watch streams: newline-delimited JSON `{"type": ..., "object": ...}` events, flushed one by one.

Semantics (after the real server's watch cache):
- no resourceVersion, or "0": synthetic ADDED events for the current state, then changes;
- resourceVersion N: every retained change after N; N older than the retained history gives one
  ERROR event carrying a 410 `Expired` Status (that is what the watch cache sends; client-go's
  reflector re-lists on it);
- sendInitialEvents=true: current state, then a BOOKMARK annotated
  `k8s.io/initial-events-end: "true"` (requires allowWatchBookmarks);
- timeoutSeconds ends the stream; allowWatchBookmarks adds periodic BOOKMARKs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .negotiation import Target
from .resources import ResourceType
from .status import ApiError, bad_request
from .storage import Event, Store
from .tables import partial_metadata, to_table

BOOKMARK_INTERVAL = 60.0


class WatchSpec:
    def __init__(
        self,
        *,
        rt: ResourceType,
        namespace: str,
        matches: Callable[[dict[str, Any]], bool],
        query: dict[str, str],
        target: Target,
        present: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        self.rt = rt
        self.namespace = namespace
        self.matches = matches
        self.target = target
        self.present = present
        rv = query.get("resourceVersion", "")
        self.since: int | None = None
        if rv not in ("", "0"):
            try:
                self.since = int(rv)
            except ValueError as exc:
                raise bad_request(f"invalid resource version: {rv}") from exc
        self.send_initial = query.get("sendInitialEvents") in ("true", "1")
        self.bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        if self.send_initial and not self.bookmarks:
            raise ApiError(
                422,
                "Invalid",
                'ListOptions.meta.k8s.io "" is invalid: allowWatchBookmarks: Forbidden: '
                "allowWatchBookmarks must be set to true when sendInitialEvents is set",
            )
        timeout = query.get("timeoutSeconds", "")
        self.timeout = float(timeout) if timeout.isdigit() and int(timeout) > 0 else 1800.0
        self.include_object = query.get("includeObject", "") or "Metadata"
        self.headers_sent = False

    def render(self, etype: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = self.present(obj)
        if self.target.as_kind == "Table":
            table = to_table(
                self.rt,
                [obj],
                {"resourceVersion": (obj.get("metadata") or {}).get("resourceVersion", "")},
                api_version=self.target.api_version,
                include_object=self.include_object,
                no_headers=self.headers_sent,
            )
            self.headers_sent = True
            return {"type": etype, "object": table}
        if self.target.as_kind == "PartialObjectMetadata":
            return {"type": etype, "object": partial_metadata(obj, self.target.api_version)}
        return {"type": etype, "object": obj}

    def bookmark(self, rv: int, initial_end: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"resourceVersion": str(rv), "creationTimestamp": None}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {
            "type": "BOOKMARK",
            "object": {"kind": self.rt.kind, "apiVersion": self.rt.api_version, "metadata": meta},
        }


def _translate(event: Event, matches: Callable[[dict[str, Any]], bool]) -> str | None:
    """Event type as seen through the selectors (objects moving in or out of the selection)."""
    if event.type == "DELETED":
        return "DELETED" if matches(event.obj) else None
    now = matches(event.obj)
    if event.type == "ADDED":
        return "ADDED" if now else None
    before = event.old is not None and matches(event.old)
    if now and before:
        return "MODIFIED"
    if now:
        return "ADDED"
    if before:
        return "DELETED"
    return None


async def serve_watch(request: web.Request, store: Store, spec: WatchSpec) -> web.StreamResponse:
    key = spec.rt.storage_key
    error_event: dict[str, Any] | None = None
    initial: list[dict[str, Any]] = []
    try:
        watcher, backlog = store.watch(key, spec.namespace, spec.since)
    except ApiError as exc:
        error_event = {"type": "ERROR", "object": exc.status()}
        watcher, backlog = None, []
    if watcher is not None and spec.since is None:
        initial = [o for o in store.list_objects(key, spec.namespace) if spec.matches(o)]
    start_rv = store.rv

    resp = web.StreamResponse(
        status=200,
        headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"},
    )
    resp.enable_chunked_encoding()
    await resp.prepare(request)

    async def send(ev: dict[str, Any]) -> None:
        await resp.write(json.dumps(ev, separators=(",", ":")).encode() + b"\n")

    try:
        if error_event is not None:
            await send(error_event)
            return resp
        assert watcher is not None
        deadline = time.monotonic() + spec.timeout
        for obj in initial:
            await send(spec.render("ADDED", obj))
        if spec.send_initial:
            await send(spec.bookmark(start_rv, initial_end=True))
        for ev in backlog:
            etype = _translate(ev, spec.matches)
            if etype:
                await send(spec.render(etype, ev.obj))
        next_bookmark = time.monotonic() + BOOKMARK_INTERVAL
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if request.transport is None or request.transport.is_closing():
                break  # the client went away
            wait = min(deadline - now, 1.0)
            if spec.bookmarks:
                wait = min(wait, max(0.0, next_bookmark - now))
            try:
                item = await asyncio.wait_for(watcher.queue.get(), timeout=wait)
            except TimeoutError:
                if spec.bookmarks and time.monotonic() >= next_bookmark:
                    if spec.target.as_kind != "Table":
                        await send(spec.bookmark(store.rv))
                    next_bookmark = time.monotonic() + BOOKMARK_INTERVAL
                continue
            if item is None:  # server shutting down
                break
            etype = _translate(item, spec.matches)
            if etype:
                await send(spec.render(etype, item.obj))
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        if watcher is not None:
            store.unwatch(watcher)
    with contextlib.suppress(ConnectionResetError, ConnectionError):
        await resp.write_eof()
    return resp

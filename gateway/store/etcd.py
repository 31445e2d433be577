"""etcd store for several gateway replicas on several hosts.

Speaks etcd's v3 JSON gateway (``/v3/kv/range``, ``/kv/put``, ``/kv/txn``,
``/kv/deleterange``, ``/watch``) over HTTP with aiohttp, so no gRPC stack is needed.
Documents live at ``<prefix><kind>/<key>``; a document's revision is etcd's
``mod_revision``, and the change feed is an etcd watch on the prefix.

On the request path a replica cannot ask etcd synchronously whether something changed
(``recent_changes`` returns None): other replicas' writes arrive through the watch,
normally within milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp

from gateway.store.base import AlreadyExists, Change, Document, Snapshot, StoreError

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0
WATCH_RETRY_S = 1.0
_PATCH_ATTEMPTS = 10
_SNAPSHOT_PAGE = 1000


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _prefix_end(prefix: str) -> str:
    """The ``range_end`` that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


class EtcdStore:
    def __init__(self, endpoints: Sequence[str], prefix: str = "/herdgate/") -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._http: aiohttp.ClientSession | None = None
        self._current = 0

    async def open(self) -> EtcdStore:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))
        await self.revision()  # fail early when etcd is unreachable
        return self

    def _key(self, kind: str, key: str) -> str:
        return f"{self.prefix}{kind}/{key}"

    def _split(self, full: str) -> tuple[str, str]:
        kind, _, key = full[len(self.prefix) :].partition("/")
        return kind, key

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the first endpoint that answers (fail-over across the cluster)."""
        if self._http is None:
            raise StoreError("store is not open")
        last: Exception | None = None
        for attempt in range(len(self.endpoints)):
            endpoint = self.endpoints[(self._current + attempt) % len(self.endpoints)]
            try:
                async with self._http.post(f"{endpoint}/v3/{path}", json=body) as resp:
                    data: dict[str, Any] = await resp.json(content_type=None)
                    if resp.status != 200:
                        raise StoreError(f"etcd {path}: HTTP {resp.status}: {data.get('error')}")
                    self._current = (self._current + attempt) % len(self.endpoints)
                    return data
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                last = exc
        raise StoreError(f"etcd unreachable ({', '.join(self.endpoints)}): {last}")

    @staticmethod
    def _revision(data: dict[str, Any]) -> int:
        return int(data.get("header", {}).get("revision", 0))

    async def get(self, kind: str, key: str) -> Document | None:
        data = await self._call("kv/range", {"key": _b64(self._key(kind, key))})
        kvs = data.get("kvs") or []
        return json.loads(_unb64(kvs[0]["value"])) if kvs else None

    async def list(self, kind: str) -> list[Document]:
        start = self._key(kind, "")
        data = await self._call("kv/range", {"key": _b64(start), "range_end": _prefix_end(start)})
        return [json.loads(_unb64(kv["value"])) for kv in data.get("kvs") or []]

    async def create(self, kind: str, key: str, value: Document) -> int:
        full = _b64(self._key(kind, key))
        data = await self._call(
            "kv/txn",
            {
                "compare": [
                    {"key": full, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}
                ],
                "success": [{"request_put": {"key": full, "value": _b64(json.dumps(value))}}],
            },
        )
        if not data.get("succeeded"):
            raise AlreadyExists(kind, key)
        return self._revision(data)

    async def put(self, kind: str, key: str, value: Document) -> int:
        data = await self._call(
            "kv/put", {"key": _b64(self._key(kind, key)), "value": _b64(json.dumps(value))}
        )
        return self._revision(data)

    async def patch(self, kind: str, key: str, changes: Document) -> tuple[int, Document] | None:
        full = _b64(self._key(kind, key))
        for _ in range(_PATCH_ATTEMPTS):
            data = await self._call("kv/range", {"key": full})
            kvs = data.get("kvs") or []
            if not kvs:
                return None
            value = {**json.loads(_unb64(kvs[0]["value"])), **changes}
            result = await self._call(
                "kv/txn",
                {
                    "compare": [
                        {
                            "key": full,
                            "result": "EQUAL",
                            "target": "MOD",
                            "mod_revision": kvs[0]["mod_revision"],
                        }
                    ],
                    "success": [{"request_put": {"key": full, "value": _b64(json.dumps(value))}}],
                },
            )
            if result.get("succeeded"):
                return self._revision(result), value
        raise StoreError(f"etcd: {kind} {key!r} kept changing; patch abandoned")

    async def delete(self, kind: str, key: str) -> int:
        data = await self._call("kv/deleterange", {"key": _b64(self._key(kind, key))})
        return self._revision(data) if int(data.get("deleted", 0)) else 0

    async def swap(
        self, kind: str, key: str, expected: Document | None, value: Document | None
    ) -> int | None:
        full = _b64(self._key(kind, key))
        data = await self._call("kv/range", {"key": full})
        kvs = data.get("kvs") or []
        current = json.loads(_unb64(kvs[0]["value"])) if kvs else None
        if current != expected:
            return None
        if current is None and value is None:
            return 0
        # The write holds only if the key has not changed since it was read: its
        # mod_revision (or, absent, its create_revision 0) is compared in one txn.
        compare = (
            {
                "key": full,
                "result": "EQUAL",
                "target": "MOD",
                "mod_revision": kvs[0]["mod_revision"],
            }
            if kvs
            else {"key": full, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}
        )
        operation = (
            {"request_delete_range": {"key": full}}
            if value is None
            else {"request_put": {"key": full, "value": _b64(json.dumps(value))}}
        )
        result = await self._call("kv/txn", {"compare": [compare], "success": [operation]})
        return self._revision(result) if result.get("succeeded") else None

    async def revision(self) -> int:
        data = await self._call("kv/range", {"key": _b64(self.prefix), "limit": 1})
        return self._revision(data)

    async def snapshot(self) -> Snapshot:
        """The whole prefix at one revision, in pages pinned to the first page's."""
        end = _prefix_end(self.prefix)
        start = _b64(self.prefix)
        pinned = 0
        documents: list[tuple[str, str, Document]] = []
        while True:
            body: dict[str, Any] = {"key": start, "range_end": end, "limit": _SNAPSHOT_PAGE}
            if pinned:
                body["revision"] = str(pinned)
            data = await self._call("kv/range", body)
            pinned = pinned or self._revision(data)
            kvs = data.get("kvs") or []
            for kv in kvs:
                kind, key = self._split(_unb64(kv["key"]))
                documents.append((kind, key, json.loads(_unb64(kv["value"]))))
            if not data.get("more") or not kvs:
                break
            start = base64.b64encode(base64.b64decode(kvs[-1]["key"]) + b"\0").decode()
        documents.sort(key=lambda d: (d[0], d[1]))
        return Snapshot(pinned, documents)

    def recent_changes(self, after: int) -> Sequence[Change] | None:
        return None

    async def changes(self, after: int) -> AsyncIterator[Change]:
        """An etcd watch on the prefix from ``after + 1``, resumed after failures."""
        last = after
        while True:
            try:
                async for change in self._watch(last + 1):
                    last = change.revision
                    yield change
            except (aiohttp.ClientError, TimeoutError, StoreError, ValueError) as exc:
                logger.warning("etcd watch interrupted: %s; resuming", exc)
            await asyncio.sleep(WATCH_RETRY_S)

    async def _watch(self, start: int) -> AsyncIterator[Change]:
        if self._http is None:
            raise StoreError("store is not open")
        endpoint = self.endpoints[self._current]
        body = {
            "create_request": {
                "key": _b64(self.prefix),
                "range_end": _prefix_end(self.prefix),
                "start_revision": str(start),
                "prev_kv": False,
            }
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self._http.post(f"{endpoint}/v3/watch", json=body, timeout=timeout) as resp:
            if resp.status != 200:
                raise StoreError(f"etcd watch: HTTP {resp.status}")
            async for line in resp.content:
                if not line.strip():
                    continue
                result = json.loads(line).get("result", {})
                if result.get("compact_revision") and result.get("canceled"):
                    raise StoreError("etcd compacted past the watch start; a reload is needed")
                for event in result.get("events") or []:
                    kv = event["kv"]
                    kind, key = self._split(_unb64(kv["key"]))
                    deleted = event.get("type") == "DELETE"
                    value = None if deleted else json.loads(_unb64(kv["value"]))
                    yield Change(int(kv["mod_revision"]), kind, key, value)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

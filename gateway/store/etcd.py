"""etcd store for several gateway replicas on several hosts.

Speaks etcd's v3 JSON gateway (``/v3/kv/range``, ``/kv/put``, ``/kv/txn``,
``/kv/deleterange``, ``/watch``, ``/auth/authenticate``, ``/lease/grant``, ``/lease/keepalive``,
``/lease/revoke``) over HTTP(S) with aiohttp, so no
gRPC stack is needed. Documents live at ``<prefix><kind>/<key>``; a document's revision
is etcd's ``mod_revision``, and the change feed is an etcd watch on the prefix.

Fail-over: a request that cannot reach an endpoint, or that etcd answers "unavailable"
(no leader, leader changed, timed out), is tried on the next endpoint, then again after
a short pause, until ``request_timeout_s``; then ``StoreUnavailable``. When every
endpoint refuses the connection it gives up after one round (etcd is down: the caller
answers 503 at once rather than after the timeout).

Authentication: with a user name, a token from ``/v3/auth/authenticate`` is sent as
``Authorization``; when etcd says it is invalid (expired: etcd forgets simple tokens
after ``--auth-token-ttl``), a new one is taken and the request repeated once. TLS: a
CA, and a client certificate for ``--client-cert-auth``.

Racing writes: ``create``, ``patch`` and ``swap`` are etcd transactions comparing the
key's ``create_revision``/``mod_revision``, so no update is lost; ``put`` and ``delete``
replace or remove whatever is there (records one writer owns, deletions).

On the request path a replica cannot ask etcd synchronously whether something changed
(``recent_changes`` returns None): other replicas' writes arrive through the watch,
normally within milliseconds. The watch asks for progress notifications; a watch whose
start revision etcd compacted raises ``Compacted`` (the directory reloads), and so does
one that etcd opens behind it (``Rewound``: etcd restored from a backup or replaced).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from config.errors import StartError
from gateway.store.base import (
    AlreadyExists,
    Change,
    Compacted,
    Document,
    Snapshot,
    StoreError,
    StoreUnavailable,
)
from gateway.store.etcd_watch import WatchProtocolError, parse_watch_line

logger = logging.getLogger(__name__)

WATCH_RETRY_MIN_S = 0.05
WATCH_RETRY_MAX_S = 0.25
"""A broken watch is resumed after a pause that doubles up to this (so a replica sees
writes again within about this long once etcd is back)."""
ROUND_PAUSE_S = 0.1
MIN_ATTEMPT_S = 0.5
UNCERTAIN = "__herdgate_uncertain__"
"""Marks an answer that came after an attempt whose outcome is unknown."""
_PATCH_ATTEMPTS = 50
_SNAPSHOT_PAGE = 1000
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
"""etcd's gateway maps gRPC Unavailable (no leader, leader changed) to 503,
DeadlineExceeded (request timed out) to 504; 500 covers "raft proposal dropped"."""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _prefix_end(prefix: str) -> str:
    """The ``range_end`` that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


_COMMON_NAME_REFUSED = "CommonName of client sending a request against gateway"


def _answer(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """An etcd gateway answer: its JSON object (None if it is not one) and its error text."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        text = raw[:300].decode("utf-8", "replace").strip()
        if _COMMON_NAME_REFUSED in text:
            text += (
                " (etcd refuses JSON-gateway requests whose client certificate has a common"
                " name: issue herdgate's client certificate without CN)"
            )
        return None, text
    if not isinstance(data, dict):
        return None, "not a JSON object"
    return data, str(data.get("error") or data.get("message") or "")[:300]


def _document(kv: dict[str, Any]) -> Document | None:
    """A stored value; None (logged) for one that is no JSON object (written by hand)."""
    try:
        doc = json.loads(_unb64(kv["value"]))
    except (KeyError, ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict):
        try:
            key = _unb64(kv["key"])
        except (KeyError, ValueError, TypeError, UnicodeDecodeError):
            key = "?"
        logger.error("etcd: %s holds no JSON document; it counts as absent", key)
        return None
    return doc


class CannotOpen(StoreUnavailable, StartError):
    """etcd cannot be reached or refuses us when the store is opened: a program cannot
    start without it (one line, exit 1)."""


class Rewound(Compacted):
    """etcd's revision is behind what the feed already delivered: etcd was restored from
    a backup or replaced by an empty one. A watch from the old revision would wait for
    revisions that name other writes now, and miss everything until then."""

    def __init__(self, after: int, current: int) -> None:
        super().__init__(after, current)
        self.args = (
            f"etcd's revision {current} is behind the {after} already seen "
            "(etcd restored from a backup or replaced)",
        )


@dataclass(frozen=True)
class EtcdOptions:
    endpoints: tuple[str, ...]
    prefix: str = "/herdgate/"
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: Callable[[], str] | None = None
    """Called whenever a new token is needed (a password file is read again)."""
    request_timeout_s: float = 5.0
    dial_timeout_s: float = 2.0


class _Retry(Exception):
    """This endpoint cannot serve the request now; try another."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class EtcdStore:
    def __init__(self, endpoints: Sequence[str] | EtcdOptions, prefix: str = "/herdgate/") -> None:
        options = (
            endpoints
            if isinstance(endpoints, EtcdOptions)
            else EtcdOptions(tuple(endpoints), prefix)
        )
        if not options.endpoints:
            raise ValueError("at least one etcd endpoint is required")
        self.options = options
        self.endpoints = [e.rstrip("/") for e in options.endpoints]
        self.prefix = options.prefix if options.prefix.endswith("/") else options.prefix + "/"
        self._http: aiohttp.ClientSession | None = None
        self._current = 0
        self._token = ""
        self._auth_lock = asyncio.Lock()

    def _ssl(self) -> ssl.SSLContext | None:
        o = self.options
        if not any(e.startswith("https://") for e in self.endpoints):
            return None
        context = ssl.create_default_context(cafile=o.ca_file or None)
        if o.cert_file:
            context.load_cert_chain(o.cert_file, o.key_file or None)
        return context

    async def open(self) -> EtcdStore:
        """Connect, and fail now (``CannotOpen``, one line) when etcd is unreachable or
        refuses us."""
        connector = aiohttp.TCPConnector(ssl=self._ssl() or True, limit=64)
        self._http = aiohttp.ClientSession(connector=connector)
        try:
            await self.revision()
        except StoreError as exc:
            await self.close()
            raise CannotOpen(str(exc)) from None
        except BaseException:
            await self.close()
            raise
        return self

    def _key(self, kind: str, key: str) -> str:
        return f"{self.prefix}{kind}/{key}"

    def _split(self, full: str) -> tuple[str, str]:
        kind, _, key = full[len(self.prefix) :].partition("/")
        return kind, key

    # -- requests with fail-over and authentication ------------------------------------

    def _timeout(self, remaining: float) -> aiohttp.ClientTimeout:
        remaining = max(0.05, remaining)
        return aiohttp.ClientTimeout(
            total=remaining, sock_connect=min(remaining, self.options.dial_timeout_s)
        )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    async def _authenticate(self, endpoint: str, stale: str, deadline: float) -> None:
        """A new token (unless another request got one since ``stale`` failed)."""
        assert self._http is not None
        async with self._auth_lock:
            if self._token != stale:
                return
            password = self.options.password() if self.options.password else ""
            body = {"name": self.options.username, "password": password}
            timeout = self._timeout(deadline - time.monotonic())
            async with self._http.post(
                f"{endpoint}/v3/auth/authenticate", json=body, timeout=timeout
            ) as resp:
                data, error = _answer(await resp.read())
                if resp.status in _RETRY_STATUSES:
                    raise _Retry(f"authenticate: HTTP {resp.status}: {error}")
                if resp.status != 200 or data is None or "token" not in data:
                    raise StoreError(
                        f"etcd refused user {self.options.username!r}: {error or resp.status}"
                    )
                self._token = str(data["token"])

    async def _post(
        self, endpoint: str, path: str, body: dict[str, Any], deadline: float
    ) -> dict[str, Any]:
        """One request to one endpoint: its answer, ``_Retry`` or ``StoreError``."""
        assert self._http is not None
        if self.options.username and not self._token:
            await self._authenticate(endpoint, "", deadline)
        for _ in range(2):
            token = self._token
            timeout = self._timeout(deadline - time.monotonic())
            async with self._http.post(
                f"{endpoint}/v3/{path}", json=body, headers=self._headers(), timeout=timeout
            ) as resp:
                data, error = _answer(await resp.read())
                if resp.status == 200 and data is not None:
                    return data
                if resp.status in _RETRY_STATUSES:
                    raise _Retry(f"etcd {path}: HTTP {resp.status}: {error}")
                if self.options.username and "token" in error and "auth" in error:
                    await self._authenticate(endpoint, token, deadline)  # expired: renew
                    continue
                raise StoreError(f"etcd {path}: HTTP {resp.status}: {error}")
        raise StoreError(f"etcd {path}: the new authentication token was refused too")

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the first endpoint that answers (fail-over across the cluster).

        One attempt gets a third of the request timeout (at least ``MIN_ATTEMPT_S``): a
        member whose leader just died holds a request until etcd's own timeout (5 s and
        more), while another member answers once the election is over (~1 s). When an
        attempt may have been applied before it failed (a timeout, a dropped connection,
        "leader changed"), the answer that finally comes carries ``UNCERTAIN``: a create
        or compare-and-set that then fails its compare may be seeing its own first
        attempt (``create``, ``swap`` and ``delete`` check)."""
        if self._http is None:
            raise StoreError("store is not open")
        timeout = self.options.request_timeout_s
        deadline = time.monotonic() + timeout
        attempt_s = max(MIN_ATTEMPT_S, timeout / 3)
        last = ""
        uncertain = False
        count = len(self.endpoints)
        while True:
            refused = 0
            for _ in range(count):
                endpoint = self.endpoints[self._current]
                try:
                    attempt_end = min(deadline, time.monotonic() + attempt_s)
                    data = await self._post(endpoint, path, body, attempt_end)
                    if uncertain:
                        data[UNCERTAIN] = True
                    return data
                except _Retry as exc:
                    last, uncertain = str(exc), True
                except aiohttp.ClientConnectorError as exc:  # not sent (TLS refusals too)
                    last, refused = f"{endpoint}: {exc.strerror or exc}", refused + 1
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    last, uncertain = f"{endpoint}: {type(exc).__name__} {exc}".strip(), True
                self._current = (self._current + 1) % count
                if time.monotonic() >= deadline:
                    break
            if refused == count or time.monotonic() + ROUND_PAUSE_S >= deadline:
                raise StoreUnavailable(f"etcd unreachable ({', '.join(self.endpoints)}): {last}")
            await asyncio.sleep(ROUND_PAUSE_S)

    async def _current_kv(self, full: str) -> dict[str, Any] | None:
        kvs = (await self._call("kv/range", {"key": full})).get("kvs") or []
        return kvs[0] if kvs else None

    @staticmethod
    def _revision(data: dict[str, Any]) -> int:
        return int(data.get("header", {}).get("revision", 0))

    # -- documents ---------------------------------------------------------------------

    async def get(self, kind: str, key: str) -> Document | None:
        data = await self._call("kv/range", {"key": _b64(self._key(kind, key))})
        kvs = data.get("kvs") or []
        return _document(kvs[0]) if kvs else None

    async def list(self, kind: str) -> list[Document]:
        start = self._key(kind, "")
        data = await self._call("kv/range", {"key": _b64(start), "range_end": _prefix_end(start)})
        docs = (_document(kv) for kv in data.get("kvs") or [])
        return [doc for doc in docs if doc is not None]

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
            if data.get(UNCERTAIN):  # perhaps our own first attempt created it
                kv = await self._current_kv(full)
                if kv is not None and json.loads(_unb64(kv["value"])) == value:
                    return int(kv["mod_revision"])
            raise AlreadyExists(kind, key)
        return self._revision(data)

    async def put(self, kind: str, key: str, value: Document) -> int:
        data = await self._call(
            "kv/put", {"key": _b64(self._key(kind, key)), "value": _b64(json.dumps(value))}
        )
        return self._revision(data)

    async def patch(self, kind: str, key: str, changes: Document) -> tuple[int, Document] | None:
        """Read, merge, and write only if the key's ``mod_revision`` is still the one read;
        a failed compare returns the current value in the same transaction, and the merge
        is tried again on it (a random pause first, so racing writers spread out)."""
        full = _b64(self._key(kind, key))
        data = await self._call("kv/range", {"key": full})
        kvs = data.get("kvs") or []
        for attempt in range(_PATCH_ATTEMPTS):
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
                    "failure": [{"request_range": {"key": full}}],
                },
            )
            if result.get("succeeded"):
                return self._revision(result), value
            responses = result.get("responses") or [{}]
            kvs = responses[0].get("response_range", {}).get("kvs") or []
            pause = random.uniform(0, 0.002 * (attempt + 1))  # noqa: S311 - jitter
            await asyncio.sleep(pause)
        raise StoreError(f"etcd: {kind} {key!r} kept changing; patch abandoned")

    async def delete(self, kind: str, key: str) -> int:
        data = await self._call("kv/deleterange", {"key": _b64(self._key(kind, key))})
        # After an attempt of unknown outcome, "nothing deleted" may mean we deleted it.
        return self._revision(data) if int(data.get("deleted", 0)) or data.get(UNCERTAIN) else 0

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
        if result.get("succeeded"):
            return self._revision(result)
        if result.get(UNCERTAIN):  # perhaps our own first attempt made the change
            kv = await self._current_kv(full)
            now = json.loads(_unb64(kv["value"])) if kv is not None else None
            if now == value:
                return int(kv["mod_revision"]) if kv is not None else self._revision(result)
        return None

    # -- etcd's own leases (``ExpiringLeases``) -----------------------------------------

    async def grant_lease(self, ttl_s: int) -> tuple[int, int]:
        data = await self._call("lease/grant", {"TTL": str(max(1, ttl_s))})
        if data.get("error") or "ID" not in data:
            raise StoreError(f"etcd granted no lease: {data.get('error') or data}")
        return int(data["ID"]), int(data.get("TTL", 0))

    async def keep_lease(self, lease_id: int) -> int:
        # One keep-alive on the gateway's streaming call: one answer, then the end.
        data = await self._call("lease/keepalive", {"ID": str(lease_id)})
        result = data.get("result")
        if not isinstance(result, dict):
            raise StoreError(f"etcd lease keep-alive: {data.get('error') or 'no result'}")
        return int(result.get("TTL", 0))  # absent (0): the lease is gone

    async def revoke_lease(self, lease_id: int) -> None:
        try:
            await self._call("lease/revoke", {"ID": str(lease_id)})
        except StoreError as exc:
            if "lease not found" not in str(exc):
                raise

    async def get_versioned(self, kind: str, key: str) -> tuple[Document, int] | None:
        kv = await self._current_kv(_b64(self._key(kind, key)))
        doc = None if kv is None else _document(kv)
        return None if kv is None or doc is None else (doc, int(kv["mod_revision"]))

    async def put_leased(
        self, kind: str, key: str, value: Document, lease_id: int, expected: int
    ) -> int | None:
        full = _b64(self._key(kind, key))
        compare = (
            {"key": full, "result": "EQUAL", "target": "MOD", "mod_revision": str(expected)}
            if expected
            else {"key": full, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}
        )
        put = {"key": full, "value": _b64(json.dumps(value)), "lease": str(lease_id)}
        body = {"compare": [compare], "success": [{"request_put": put}]}
        result = await self._call("kv/txn", body)
        if result.get("succeeded"):
            return self._revision(result)
        if result.get(UNCERTAIN):  # perhaps our own first attempt wrote it
            kv = await self._current_kv(full)
            if kv is not None and int(kv.get("lease", 0)) == lease_id and _document(kv) == value:
                return int(kv["mod_revision"])
        return None

    async def revision(self) -> int:
        data = await self._call("kv/range", {"key": _b64(self.prefix), "limit": 1})
        return self._revision(data)

    async def compact(self, revision: int) -> None:
        """Compact etcd's history up to ``revision`` (tests and maintenance)."""
        await self._call("kv/compaction", {"revision": str(revision), "physical": True})

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

    # -- the change feed ---------------------------------------------------------------

    async def changes(self, after: int) -> AsyncIterator[Change]:
        """An etcd watch on the prefix from ``after + 1``, resumed (on the next endpoint)
        after failures; ``Compacted`` when etcd compacted past where it must resume (or went
        back before it)."""
        last = after
        pause = WATCH_RETRY_MIN_S
        while True:
            try:
                async for change in self._watch(last + 1):
                    pause = WATCH_RETRY_MIN_S
                    last = max(last, change.revision)
                    yield change
            except Compacted:
                raise
            except (aiohttp.ClientError, TimeoutError, StoreError, ValueError) as exc:
                logger.warning("etcd watch interrupted: %s; resuming", exc)
                self._current = (self._current + 1) % len(self.endpoints)
            await asyncio.sleep(pause)
            pause = min(pause * 2, WATCH_RETRY_MAX_S)

    async def _watch(self, start: int) -> AsyncIterator[Change]:
        if self._http is None:
            raise StoreError("store is not open")
        endpoint = self.endpoints[self._current]
        if self.options.username and not self._token:
            deadline = time.monotonic() + self.options.request_timeout_s
            await self._authenticate(endpoint, "", deadline)
        body = {
            "create_request": {
                "key": _b64(self.prefix),
                "range_end": _prefix_end(self.prefix),
                "start_revision": str(start),
                "progress_notify": True,
                "prev_kv": False,
            }
        }
        timeout = aiohttp.ClientTimeout(
            total=None, sock_read=None, sock_connect=self.options.dial_timeout_s
        )
        token = self._token
        async with self._http.post(
            f"{endpoint}/v3/watch", json=body, headers=self._headers(), timeout=timeout
        ) as resp:
            if resp.status != 200:
                if resp.status == 401:
                    self._forget_token(token)
                raise StoreError(f"etcd watch on {endpoint}: HTTP {resp.status}")
            async for line in resp.content:
                if not line.strip():
                    continue
                try:
                    message = parse_watch_line(line, self.prefix)
                except WatchProtocolError as exc:
                    raise StoreError(f"etcd watch on {endpoint}: {exc}") from None
                if message.compact_revision:
                    raise Compacted(start - 1, message.compact_revision)
                if message.created and 0 < message.header_revision < start - 1:
                    # etcd is behind what we saw: restored from a backup, or replaced.
                    # A watch from ``start`` would wait for revisions that mean other
                    # writes now, and miss everything until then.
                    raise Rewound(start - 1, message.header_revision)
                if message.canceled:
                    if "token" in message.reason:
                        self._forget_token(token)
                    raise StoreError(f"etcd canceled the watch: {message.reason}")
                for problem in message.unreadable:
                    logger.error("etcd: %s; the record counts as absent", problem)
                for change in message.changes:
                    yield change
                if message.progress:
                    yield Change(message.progress, "", "", None)

    def _forget_token(self, token: str) -> None:
        """etcd refused ``token``: the next attempt takes a new one (unless another
        request already did)."""
        if self.options.username and self._token == token:
            self._token = ""

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

"""The audit log: who did what on which cluster, one JSON line per event.

Records are built by pure functions (``request_record``, ``session_record``) and
written by ``AuditLog``, which buffers lines and writes them at most every
``FLUSH_S`` (or when ``FLUSH_BYTES`` are waiting), so a request costs a
``json.dumps`` and an append. The file is rotated by size (``audit.log`` ->
``audit.log.1`` ...); several worker processes may share it: appends are atomic, one
process rotates under a lock, and the others notice the new file and reopen.

Never in a record: the Authorization header, tokens or passwords (query parameters
named like credentials are redacted), or bodies of kinds that carry secrets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import functools
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from config.errors import ConfigError
from config.identity import Identity
from config.schema import AuditSettings

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
"""The header that carries a request's id back to the client (and to the API server)."""

_p = os.urandom(10).hex()
_PROCESS = f"{_p[:8]}-{_p[8:12]}-{_p[12:16]}-{_p[16:20]}-"
_counter = itertools.count(1)


def new_request_id() -> str:
    """A request's id, on its log lines and its audit record, for every request the
    gateway serves (proxied, management API, agents' connects): UUID-shaped, 80 random
    bits per process, then a counter (unique, and cheap)."""
    return _PROCESS + format(next(_counter) & 0xFFFFFFFFFFFF, "012x")


FLUSH_S = 0.2
FLUSH_BYTES = 64 * 1024
LEVELS = ("metadata", "request")

SECRET_RESOURCES = frozenset(
    {
        "secrets",
        "tokenreviews",
        "serviceaccounts/token",
        "clusterauthtokens",
        "certificatesigningrequests",
    }
)
"""Kinds whose request bodies are never recorded."""
_SECRET_QUERY_KEYS = frozenset({"token", "access_token", "id_token", "password", "secret"})
_JSON_TYPES = (
    "application/json",
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/strategic-merge-patch+json",
)
_PROTOBUF_TYPE = "application/vnd.kubernetes.protobuf"
_PROTOBUF_MAGIC = b"k8s\x00"


class RequestInfo(Protocol):
    """What an audit record says of a Kubernetes request (``gateway.proxy.requestinfo``)."""

    @property
    def verb(self) -> str: ...

    @property
    def resource(self) -> str: ...

    @property
    def namespace(self) -> str: ...

    @property
    def name(self) -> str: ...


MAX_PATH_CHARS = 2048
MAX_AGENT_CHARS = 512
MAX_NAME_CHARS = 256
"""Caps on what a client chooses in a record (the path and query, the user agent, the
names read from the path, a login name): an unauthenticated client sending 60 KiB
targets and user agents cannot make each of its records 60 KiB, so a flood of them
cannot wash the audit log through its rotation faster than any other client could."""


def cap(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, saying how long it was."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}...[{len(value)} chars]"


_second: list[Any] = [-1, ""]


def _iso(seconds: float) -> str:
    whole = int(seconds)
    if whole != _second[0]:  # one strftime per second, not per record
        _second[:] = [whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))]
    return f"{_second[1]}.{int((seconds - whole) * 1_000_000):06d}Z"


def redact_target(target: str) -> str:
    """The path and query, with credential-like query values replaced."""
    path, sep, query = target.partition("?")
    if not sep or not any(key in query.lower() for key in _SECRET_QUERY_KEYS):
        return target
    pairs = []
    for pair in query.split("&"):
        name, eq, _ = pair.partition("=")
        pairs.append(f"{name}=<redacted>" if eq and name.lower() in _SECRET_QUERY_KEYS else pair)
    return f"{path}?{'&'.join(pairs)}"


def request_body(
    info: RequestInfo, content_type: str, body: bytes | None, max_body: int
) -> dict[str, Any]:
    """The ``requestObject`` part of a record at level ``request``."""
    if body is None:
        return {}
    if info.resource in SECRET_RESOURCES or info.resource.split("/")[0] in SECRET_RESOURCES:
        return {"requestObjectOmitted": "secret kind"}
    if len(body) > max_body:
        return {"requestObjectOmitted": f"larger than {max_body} bytes"}
    if content_type.startswith(_PROTOBUF_TYPE):
        envelope = protobuf_envelope(body)
        if envelope is None:
            return {"requestObjectOmitted": "malformed protobuf"}
        api_version, kind, raw = envelope
        return {
            "requestObject": {
                "apiVersion": api_version,
                "kind": kind,
                "protobuf": base64.b64encode(raw).decode(),
            }
        }
    if not content_type.startswith(_JSON_TYPES):
        return {"requestObjectOmitted": f"content type {content_type or 'unknown'}"}
    try:
        return {"requestObject": json.loads(body)}
    except (ValueError, UnicodeDecodeError):
        return {"requestObjectOmitted": "not valid JSON"}


def _fields(data: bytes) -> dict[int, bytes] | None:
    """Length-delimited fields of one protobuf message (others are skipped)."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > end:
                return None
            out[number] = data[pos : pos + size]
            pos += size
        elif wire == 0:
            _, pos = _varint(data, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            return None
    return out if pos == end else None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return value, len(data) + 1  # truncated: callers see pos past the end


def protobuf_envelope(body: bytes) -> tuple[str, str, bytes] | None:
    """apiVersion, kind and the encoded object of a Kubernetes protobuf body.

    The body is ``k8s\\0`` and a ``runtime.Unknown``: field 1 its TypeMeta (1:
    apiVersion, 2: kind), field 2 the object itself. The object's fields need the
    kind's schema, so the record keeps it encoded (base64).
    """
    if not body.startswith(_PROTOBUF_MAGIC):
        return None
    unknown = _fields(body[len(_PROTOBUF_MAGIC) :])
    if unknown is None:
        return None
    type_meta = _fields(unknown.get(1, b""))
    if type_meta is None:
        return None
    try:
        api_version = type_meta.get(1, b"").decode()
        kind = type_meta.get(2, b"").decode()
    except UnicodeDecodeError:
        return None
    return api_version, kind, unknown.get(2, b"")


def _who(identity: Identity | None, role: str | None) -> dict[str, Any]:
    if identity is None:
        return {"user": None}
    return {
        "user": identity.user_id,
        "username": identity.username,
        "principal": identity.principal_id,
        "groups": list(identity.groups),
        "role": role,
        "tokenId": identity.token_id or None,
    }


def request_record(
    *,
    started: float,
    request_id: str,
    identity: Identity | None,
    role: str | None,
    cluster_id: str,
    method: str,
    target: str,
    info: RequestInfo | None,
    source: str,
    user_agent: str,
    status: int,
    duration_s: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "time": _iso(started),
        "kind": "request",
        "requestId": request_id,
        **_who(identity, role),
        "cluster": cap(cluster_id, MAX_NAME_CHARS),
        "verb": cap(info.verb if info else method.lower(), MAX_NAME_CHARS),
        "method": cap(method, MAX_NAME_CHARS),
        "path": cap(redact_target(target), MAX_PATH_CHARS),
        "resource": cap(info.resource, MAX_NAME_CHARS) if info else "",
        "namespace": cap(info.namespace, MAX_NAME_CHARS) if info else "",
        "name": cap(info.name, MAX_NAME_CHARS) if info else "",
        "sourceIP": source,
        "userAgent": cap(user_agent, MAX_AGENT_CHARS),
        "status": status,
        "durationMs": round(duration_s * 1000, 3),
    }
    if extra:
        record.update(extra)
    return record


_quote: Callable[[str], str] = encode_basestring_ascii


@functools.lru_cache(maxsize=4096)
def _who_json(identity: Identity | None, role: str | None) -> str:
    return json.dumps(_who(identity, role), separators=(",", ":"))[1:-1]


def request_line(
    *,
    started: float,
    request_id: str,
    identity: Identity | None,
    role: str | None,
    cluster_id: str,
    method: str,
    target: str,
    info: RequestInfo | None,
    source: str,
    user_agent: str,
    status: int,
    duration_s: float,
    extra: dict[str, Any] | None = None,
) -> str:
    """``request_record`` as its JSON text, built for the hot path (same content).

    The caller's part (user, principal, groups, role) is serialised once per identity;
    the rest are a few escaped strings joined together.
    """
    q = _quote
    n = MAX_NAME_CHARS
    parts = [
        '{"time":"',
        _iso(started),
        '","kind":"request","requestId":',
        q(request_id),
        ",",
        _who_json(identity, role),
        ',"cluster":',
        q(cluster_id if len(cluster_id) <= n else cap(cluster_id, n)),
        ',"verb":',
        q(cap(info.verb if info else method.lower(), n)),
        ',"method":',
        q(method if len(method) <= n else cap(method, n)),
        ',"path":',
        q(cap(redact_target(target), MAX_PATH_CHARS)),
        ',"resource":',
        q(cap(info.resource, n) if info else ""),
        ',"namespace":',
        q(cap(info.namespace, n) if info else ""),
        ',"name":',
        q(cap(info.name, n) if info else ""),
        ',"sourceIP":',
        q(source),
        ',"userAgent":',
        q(user_agent if len(user_agent) <= MAX_AGENT_CHARS else cap(user_agent, MAX_AGENT_CHARS)),
        ',"status":',
        str(status),
        ',"durationMs":',
        repr(round(duration_s * 1000, 3)),
    ]
    if extra:
        parts += [",", json.dumps(extra, separators=(",", ":"))[1:-1]]
    parts.append("}")
    return "".join(parts)


def session_record(
    *,
    stage: str,
    started: float,
    ended: float | None,
    request_id: str,
    identity: Identity | None,
    role: str | None,
    cluster_id: str,
    target: str,
    info: RequestInfo,
    source: str,
    bytes_from_client: int = 0,
    bytes_to_client: int = 0,
) -> dict[str, Any]:
    """An exec/attach/port-forward session: ``stage`` is ``started`` or ``ended``."""
    record: dict[str, Any] = {
        "time": _iso(ended if ended is not None else started),
        "kind": "session",
        "stage": stage,
        "requestId": request_id,
        **_who(identity, role),
        "cluster": cap(cluster_id, MAX_NAME_CHARS),
        "verb": info.verb,
        "path": cap(redact_target(target), MAX_PATH_CHARS),
        "resource": cap(info.resource, MAX_NAME_CHARS),
        "namespace": cap(info.namespace, MAX_NAME_CHARS),
        "name": cap(info.name, MAX_NAME_CHARS),
        "sourceIP": source,
        "start": _iso(started),
    }
    if ended is not None:
        record.update(
            end=_iso(ended),
            durationMs=round((ended - started) * 1000, 3),
            bytesFromClient=bytes_from_client,
            bytesToClient=bytes_to_client,
        )
    return record


def management_record(
    *,
    started: float,
    request_id: str,
    identity: Identity | None,
    method: str,
    target: str,
    resource: str,
    action: str,
    object_id: str,
    source: str,
    user_agent: str,
    status: int,
    duration_s: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A change made through the management API (``kind: management``) or a login
    attempt (``kind: login``), made or refused: who (the caller, when authenticated),
    what (``resource`` and ``action``: ``users``/``create``, ``clusterregistrationtokens``
    /``rotate``...), on which object, with what result. Never a body: a login's
    ``extra`` holds its provider, the name tried and the result."""
    record: dict[str, Any] = {
        "time": _iso(started),
        "kind": "login" if resource == "login" else "management",
        "requestId": request_id,
        **_who(identity, None),
        "resource": resource,
        "action": action,
        "objectId": cap(object_id, MAX_NAME_CHARS) or None,
        "method": cap(method, MAX_NAME_CHARS),
        "path": cap(redact_target(target), MAX_PATH_CHARS),
        "sourceIP": source,
        "userAgent": cap(user_agent, MAX_AGENT_CHARS),
        "status": status,
        "durationMs": round(duration_s * 1000, 3),
    }
    record.pop("role", None)
    if extra:
        record.update(
            {k: cap(v, MAX_NAME_CHARS) if isinstance(v, str) else v for k, v in extra.items()}
        )
    return record


class AuditLog:
    """Buffered, rotated JSON-lines writer (or standard output, or nothing)."""

    def __init__(self, settings: AuditSettings, state_dir: str | Path) -> None:
        if settings.level not in LEVELS:
            raise ConfigError("audit.level", f"expected one of {', '.join(LEVELS)}")
        self.settings = settings
        self.level = settings.level
        self.enabled = settings.path != "off"
        self._stdout = settings.path == "-"
        self.path = Path(settings.path or Path(state_dir) / "audit.log")
        self._buffer: list[str] = []
        self._size = 0
        self._fd = -1
        self._inode = 0
        self._written = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        if self.enabled and not self._stdout:
            self._open()

    @property
    def records_bodies(self) -> bool:
        return self.enabled and self.level == "request"

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        st = os.fstat(self._fd)
        self._inode = st.st_ino
        self._written = st.st_size

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self.write_json(json.dumps(record, separators=(",", ":")))

    def write_json(self, text: str) -> None:
        """Append one record given as JSON object text (see ``request_line``)."""
        if not self.enabled:
            return
        if self._stdout:
            text = '{"log":"audit",' + text[1:]
        line = text + "\n"
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flush_handle = loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._buffer:
            return
        data = "".join(self._buffer).encode()
        self._buffer.clear()
        self._size = 0
        if self._stdout:
            sys.stdout.write(data.decode())
            sys.stdout.flush()
            return
        try:
            self._reopen_if_rotated()
            if self._written + len(data) > self.settings.max_size and self._written:
                self._rotate()
            os.write(self._fd, data)
            self._written += len(data)
        except OSError as exc:
            logger.error("cannot write the audit log %s: %s", self.path, exc)

    def _reopen_if_rotated(self) -> None:
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = -1
        if inode != self._inode:
            os.close(self._fd)
            self._open()

    def _rotate(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        lock = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # Another process may have rotated while this one waited for the lock.
            if os.stat(self.path).st_ino == self._inode:
                backups = self.settings.max_backups
                for index in range(backups - 1, 0, -1):
                    older = self.path.with_name(f"{self.path.name}.{index}")
                    if older.exists():
                        older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
                if backups > 0:
                    self.path.replace(self.path.with_name(f"{self.path.name}.1"))
                else:
                    self.path.unlink()
            os.close(self._fd)
            self._open()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            os.close(lock)

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


AUDIT = web.AppKey("audit", AuditLog)

"""Parsing of etcd's watch stream (the v3 JSON gateway's ``/v3/watch``): pure, no I/O.

Each line the gateway streams is one JSON object: ``{"result": WatchResponse}`` or, when
the stream fails, ``{"error": {...}}``. ``parse_watch_line`` turns one into a
``WatchMessage`` or raises ``WatchProtocolError`` (input from the network: anything
else, however malformed, is that error, never another exception).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from gateway.store.base import Change, Document


class WatchProtocolError(ValueError):
    """A watch line that is not what etcd sends."""


@dataclass(frozen=True, slots=True)
class WatchMessage:
    changes: tuple[Change, ...] = ()
    """Writes, in revision order."""
    progress: int = 0
    """Every write up to this revision has been delivered (a progress notification); 0:
    not a progress notification."""
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    """Set when etcd canceled the watch because its start revision was compacted."""
    reason: str = ""
    """Why the watch was canceled or failed."""
    header_revision: int = 0
    """etcd's current revision when it sent this (0 when not said)."""
    unreadable: tuple[str, ...] = ()
    """Events whose value is no JSON object (each a deletion in ``changes``), and why."""


def _revision(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise WatchProtocolError(f"{what} is not a revision")
    try:
        number = int(value)
    except ValueError:
        raise WatchProtocolError(f"{what} is not a revision") from None
    if number < 0:
        raise WatchProtocolError(f"{what} is negative")
    return number


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise WatchProtocolError(f"{what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise WatchProtocolError(f"{what} is not base64 UTF-8") from None


def _document(text: str, key: str) -> Document:
    try:
        doc = json.loads(text)
    except ValueError:
        raise WatchProtocolError(f"etcd key {key!r} holds no JSON document") from None
    if not isinstance(doc, dict):
        raise WatchProtocolError(f"etcd key {key!r} holds no JSON object")
    return doc


def _change(event: Any, prefix: str) -> tuple[Change, str]:
    """The change an event makes, and why its value could not be read ("" if it could)."""
    if not isinstance(event, dict) or not isinstance(event.get("kv"), dict):
        raise WatchProtocolError("a watch event without a kv")
    kv = event["kv"]
    full = _text(kv.get("key"), "an event's key")
    if not full.startswith(prefix):
        raise WatchProtocolError(f"an event for {full!r}, outside {prefix!r}")
    kind, sep, key = full[len(prefix) :].partition("/")
    if not sep or not kind:
        raise WatchProtocolError(f"an event for {full!r}, not <prefix><kind>/<key>")
    revision = _revision(kv.get("mod_revision"), "an event's mod_revision")
    kind_of_event = event.get("type", "PUT")
    if kind_of_event == "DELETE":
        return Change(revision, kind, key, None), ""
    if kind_of_event != "PUT":
        raise WatchProtocolError(f"an event of unknown type {kind_of_event!r}")
    try:
        value = _document(_text(kv.get("value", ""), "a value"), full)
    except WatchProtocolError as exc:
        # A value that is no document (written by hand into our prefix): the record is
        # unusable, so it counts as absent; refusing the event would stop the feed here.
        return Change(revision, kind, key, None), str(exc)
    return Change(revision, kind, key, value), ""


def parse_watch_line(line: bytes | str, prefix: str) -> WatchMessage:
    """One line of the watch stream; ``prefix`` is the watched key prefix (ending in /)."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise WatchProtocolError("a watch line that is not JSON") from None
    if not isinstance(data, dict):
        raise WatchProtocolError("a watch line that is not a JSON object")
    if "error" in data:
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else error
        return WatchMessage(canceled=True, reason=str(message)[:500])
    result = data.get("result")
    if not isinstance(result, dict):
        raise WatchProtocolError("a watch line without a result")
    header = result.get("header", {})
    if not isinstance(header, dict):
        raise WatchProtocolError("a watch result whose header is not an object")
    revision = _revision(header.get("revision", 0), "the header's revision")
    compact = _revision(result.get("compact_revision", 0), "compact_revision")
    canceled = result.get("canceled", False) is True
    created = result.get("created", False) is True
    events = result.get("events") or []
    if not isinstance(events, list):
        raise WatchProtocolError("a watch result whose events are not a list")
    parsed = [_change(event, prefix) for event in events]
    changes = tuple(change for change, _ in parsed)
    unreadable = tuple(f"{c.kind}/{c.key}: {why}" for c, why in parsed if why)
    if canceled or compact:
        reason = result.get("cancel_reason", "")
        return WatchMessage(
            canceled=True, compact_revision=compact, reason=str(reason)[:500] or "canceled"
        )
    if created and not changes:
        # The creation's header revision is etcd's current one, not ours: writes from
        # the start revision on are still to come.
        return WatchMessage(created=True, header_revision=revision)
    # With events, the header revision may run ahead of them (an unsynced watcher gets
    # its backlog in batches); without, it is a progress notification.
    return WatchMessage(
        changes=changes,
        progress=0 if changes else revision,
        created=created,
        header_revision=revision,
        unreadable=unreadable,
    )

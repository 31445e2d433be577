"""Parsing etcd's watch stream (network input): every line is a WatchMessage or a
WatchProtocolError, never another exception."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store.base import Change
from gateway.store.etcd import _answer
from gateway.store.etcd_watch import WatchMessage, WatchProtocolError, parse_watch_line

PREFIX = "/herdgate/"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def line(result: dict[str, Any]) -> bytes:
    return json.dumps({"result": result}).encode() + b"\n"


def kv(key: str, revision: int, value: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"key": b64(PREFIX + key), "mod_revision": str(revision)}
    if value is not None:
        out["value"] = b64(json.dumps(value))
    return out


def test_events_become_changes_in_order() -> None:
    message = parse_watch_line(
        line({
            "header": {"revision": "9"},
            "events": [
                {"kv": kv("tokens/token-a", 7, {"id": "token-a"})},
                {"type": "DELETE", "kv": kv("users/u-1", 8)},
            ],
        }),
        PREFIX,
    )  # fmt: skip
    assert message.changes == (
        Change(7, "tokens", "token-a", {"id": "token-a"}),
        Change(8, "users", "u-1", None),
    )
    assert message.progress == 0  # the header may run ahead of the events


def test_a_progress_notification() -> None:
    assert parse_watch_line(line({"header": {"revision": "42"}}), PREFIX) == WatchMessage(
        progress=42, header_revision=42
    )


def test_creation_is_not_progress() -> None:
    message = parse_watch_line(line({"header": {"revision": "42"}, "created": True}), PREFIX)
    assert message.created and message.progress == 0 and message.header_revision == 42


def test_compaction_cancels() -> None:
    message = parse_watch_line(
        line({"header": {"revision": "50"}, "compact_revision": "40", "canceled": True}), PREFIX
    )
    assert message.canceled and message.compact_revision == 40


def test_a_stream_error() -> None:
    message = parse_watch_line(b'{"error": {"grpc_code": 14, "message": "no leader"}}', PREFIX)
    assert message.canceled and message.reason == "no leader"


def test_keys_outside_the_prefix_are_refused() -> None:
    bad = {"kv": {"key": b64("/other/users/x"), "mod_revision": "3", "value": b64("{}")}}
    try:
        parse_watch_line(line({"events": [bad]}), PREFIX)
    except WatchProtocolError as exc:
        assert "outside" in str(exc)
    else:
        raise AssertionError("accepted a key outside the prefix")


def test_a_value_that_is_not_a_document_counts_as_absent() -> None:
    """Refusing it would stop the feed at that revision for good (every retry resumes
    there): the record is unusable, so it is a deletion, and the feed goes on."""
    event = {"kv": {"key": b64(PREFIX + "users/x"), "mod_revision": "3", "value": b64("[1]")}}
    good = {"kv": kv("users/y", 4, {"id": "y"})}
    message = parse_watch_line(line({"events": [event, good]}), PREFIX)
    assert message.changes == (Change(3, "users", "x", None), Change(4, "users", "y", {"id": "y"}))
    assert len(message.unreadable) == 1 and "users/x" in message.unreadable[0]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["result", "error", "header", "revision", "events", "kv", "key", "value",
             "mod_revision", "type", "created", "canceled", "compact_revision", "message"]
        ) | st.text(max_size=8),
        children,
        max_size=5,
    ),
    max_leaves=25,
)  # fmt: skip


def _check(raw: bytes) -> None:
    try:
        message = parse_watch_line(raw, PREFIX)
    except WatchProtocolError:
        return
    assert isinstance(message, WatchMessage)
    for change in message.changes:
        assert change.kind and change.revision >= 0
        assert change.value is None or isinstance(change.value, dict)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_is_a_message_or_a_protocol_error(value: Any) -> None:
    _check(json.dumps(value).encode())
    _check(json.dumps({"result": value}).encode())


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"kv": st.fixed_dictionaries({
                "key": st.text(max_size=30).map(b64) | st.text(max_size=10),
                "mod_revision": st.integers(-5, 10**12).map(str) | st.text(max_size=5),
                "value": st.text(max_size=30).map(b64) | st.integers(),
            })},
            optional={"type": st.sampled_from(["PUT", "DELETE", "OTHER", 3])},
        ),
        max_size=4,
    ),
    st.binary(max_size=40),
)  # fmt: skip
def test_event_shapes_and_bytes(events: list[dict[str, Any]], noise: bytes) -> None:
    _check(line({"header": {"revision": "5"}, "events": events}))
    _check(noise)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_etcd_answer_is_a_document_or_an_error_text(raw: bytes) -> None:
    data, error = _answer(raw)
    assert data is None or isinstance(data, dict)
    assert isinstance(error, str) and len(error) <= 400


def test_the_common_name_refusal_says_what_to_do() -> None:
    data, error = _answer(
        b"CommonName of client sending a request against gateway will be ignored and not used"
    )
    assert data is None and "without CN" in error

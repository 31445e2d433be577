"""gateway.api.jsonbody: the management API's one strict JSON parser (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api.jsonbody import MAX_DEPTH, BadBody, parse_object

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)  # fmt: skip


def _nest(depth: int) -> dict[str, Any]:
    value: Any = {}
    for _ in range(depth - 1):
        value = {"a": value}
    assert isinstance(value, dict)
    return value


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _values, max_size=6))
def test_any_json_object_reads_back_as_itself(obj: dict[str, Any]) -> None:
    assert parse_object(json.dumps(obj).encode()) == obj


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_an_object_or_bad_body(raw: bytes) -> None:
    try:
        assert isinstance(parse_object(raw), dict)
    except BadBody as exc:
        assert str(exc)


def test_depth_limit_is_exact() -> None:
    assert parse_object(json.dumps(_nest(MAX_DEPTH)).encode())
    with pytest.raises(BadBody, match="nested too deeply"):
        parse_object(json.dumps(_nest(MAX_DEPTH + 1)).encode())
    with pytest.raises(BadBody, match="nested too deeply"):
        parse_object(b"[" * 1_000_000)
    with pytest.raises(BadBody, match="nested too deeply"):
        parse_object(b'{"a":' * 200_000)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"a": 1, "a": 2}', "appears twice"),
        (b'{"a": NaN}', "not JSON"),
        (b'{"a": -Infinity}', "not JSON"),
        (b'{"a": 1e400}', "out of range"),
        (b'{"a": ' + b"1" * 5000 + b"}", "not valid JSON"),
        ('{"a": 1}'.encode("utf-16"), "not UTF-8"),
        (b"\xef\xbb\xbf{}", "not valid JSON"),
        (b'{"a": "\x01"}', "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b"{} {}", "not valid JSON"),
    ],
)
def test_lenient_spellings_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(BadBody, match=message):
        parse_object(raw)


def test_empty_body_is_an_empty_object() -> None:
    assert parse_object(b"") == {} == parse_object(b" \r\n")

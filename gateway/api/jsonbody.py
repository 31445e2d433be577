"""The one JSON parser for management-API request bodies (pure: bytes in, object out).

Strict where Python's ``json`` module is lenient, so that a body means one thing only:
UTF-8 without a byte-order mark (``json.loads`` on bytes would also guess UTF-16 and
UTF-32), no ``NaN`` or ``Infinity`` and no number that overflows to one, no key given
twice (which of the two counts is not defined by RFC 8259), a JSON object at the top
and at most ``MAX_DEPTH`` levels of nesting. Nesting is bounded twice: deeper than the
interpreter's recursion limit, the decoder raises ``RecursionError`` (it used to
escape as a 500), and the decoded value is walked once to enforce ``MAX_DEPTH``.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_BODY_BYTES = 1024 * 1024
MAX_DEPTH = 32
"""Levels of arrays and objects, the body object included."""


class BadBody(ValueError):
    """The body is not one strict JSON object; the message is safe to show the caller."""


def _no_constant(name: str) -> Any:
    raise BadBody(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadBody(f"the number {text[:32]} is out of range")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BadBody(f"the key {key[:64]!r} appears twice")
        out[key] = value
    return out


_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique, parse_float=_finite, parse_constant=_no_constant, strict=True
)


def _depth_ok(value: Any, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` arrays and objects (iterative walk)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


def parse_object(raw: bytes, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The JSON object in ``raw``; ``{}`` for an empty body. Raises ``BadBody``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadBody("request body is not UTF-8") from None
    if not text.strip():
        return {}
    try:
        data = _DECODER.decode(text)
    except BadBody:
        raise
    except RecursionError:
        raise BadBody(f"request body is nested too deeply (at most {max_depth} levels)") from None
    except ValueError as exc:
        # JSONDecodeError's message names the position, never the content; the integer
        # digit limit's names the limit.
        raise BadBody(f"request body is not valid JSON: {str(exc)[:120]}") from None
    if not _depth_ok(data, max_depth):
        raise BadBody(f"request body is nested too deeply (at most {max_depth} levels)")
    if not isinstance(data, dict):
        raise BadBody("request body must be a JSON object")
    return data

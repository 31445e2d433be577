"""Label and field selectors (k8s.io/apimachinery/pkg/labels, pkg/fields), enough for kubectl."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .status import bad_request

Predicate = Callable[[dict[str, Any]], bool]

_REQ_RE = re.compile(
    r"""\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*
        (?:(?P<op>==|!=|=|\bin\b|\bnotin\b|>|<)\s*
           (?:\((?P<set>[^)]*)\)|(?P<val>[A-Za-z0-9_.-]*)))?\s*""",
    re.VERBOSE,
)


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # exists, !exists, =, !=, in, notin, >, <
    values: frozenset[str] = frozenset()
    number: int = 0

    def matches(self, labels: dict[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op == "exists":
            return value is not None
        if self.op == "!exists":
            return value is None
        if self.op in ("=", "in"):
            return value in self.values
        if self.op in ("!=", "notin"):
            return value not in self.values
        number = _int(value)
        return number > self.number if self.op == ">" else number < self.number


def _requirement(part: str) -> _Requirement:
    m = _REQ_RE.fullmatch(part)
    if not m:
        raise bad_request(f"unable to parse requirement: {part!r}")
    key, op, neg = m.group("key"), m.group("op"), m.group("neg")
    if neg and op:
        raise bad_request(f"unable to parse requirement: {part!r}")
    if op is None:
        return _Requirement(key, "!exists" if neg else "exists")
    if op in ("in", "notin"):
        values = frozenset(v.strip() for v in (m.group("set") or "").split(",") if v.strip())
        return _Requirement(key, op, values)
    value = m.group("val") or ""
    if op in ("=", "=="):
        return _Requirement(key, "=", frozenset((value,)))
    if op == "!=":
        return _Requirement(key, "!=", frozenset((value,)))
    try:
        return _Requirement(key, op, number=int(value))
    except ValueError as exc:
        raise bad_request(f"unable to parse requirement: {part!r}") from exc


def parse_label_selector(text: str | None) -> Predicate:
    if not text or not text.strip():
        return lambda _obj: True
    requirements = [_requirement(part) for part in _split_top(text)]

    def predicate(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r.matches(labels) for r in requirements)

    return predicate


def _int(value: str | None) -> float:
    try:
        return int(value) if value is not None else float("nan")
    except ValueError:
        return float("nan")


def _field_value(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if isinstance(cur, list):  # status.podIPs: match any
        return ",".join(str(x.get("ip", x)) if isinstance(x, dict) else str(x) for x in cur)
    return str(cur)


def parse_field_selector(
    text: str | None, allowed: tuple[str, ...], custom: bool = False
) -> Predicate:
    if not text or not text.strip():
        return lambda _obj: True
    checks: list[tuple[str, bool, str]] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        m = re.fullmatch(r"([^=!]+?)\s*(==|!=|=)\s*(.*)", part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        key, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        if key not in ("metadata.name", "metadata.namespace", *allowed):
            raise bad_request(
                f'"{key}" is not a known field selector: only "metadata.name", "metadata.namespace"'
                if custom
                else f"field label not supported: {key}"
            )
        checks.append((key, op == "!=", value))

    def predicate(obj: dict[str, Any]) -> bool:
        for key, negate, value in checks:
            actual = _field_value(obj, key)
            hit = value in actual.split(",") if key == "status.podIPs" else actual == value
            if hit == negate:
                return False
        return True

    return predicate

"""What the CLI prints (pure): tables, details, JSON, YAML and names.

Everything a gateway sends back is text chosen by someone else (a cluster's name, a
user's display name, an error message), so nothing of it reaches the terminal raw:
control and format characters (escape sequences, bidirectional overrides, zero-width
characters, line breaks) are written as Python-style escapes (``\\x1b``, ``\\u202e``),
and columns are aligned by the width a terminal gives each character (two for East
Asian wide characters, none for combining marks).
"""

from __future__ import annotations

import datetime as dt
import json
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

GAP = 3
"""Spaces between columns, as kubectl's tables."""

FORMATS = ("json", "yaml", "name")
"""The values of ``-o``; without it, a table."""

_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
"""Control, format, surrogate, private-use and unassigned characters, line and paragraph
separators: what a terminal may act on, or draw with a width nobody can predict."""
_COMBINING = frozenset({"Mn", "Me", "Mc"})


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with every character a terminal could act on written as an escape; a
    combining mark that opens the text is escaped too (it would join what precedes it)."""
    out: list[str] = []
    for index, ch in enumerate(text):
        category = unicodedata.category(ch)
        if category in _ESCAPED_CATEGORIES or (index == 0 and category in _COMBINING):
            out.append(_escape_char(ch))
        else:
            out.append(ch)
    return "".join(out)


def char_width(ch: str) -> int:
    """Terminal columns of one (already escaped, so printable) character."""
    if unicodedata.category(ch) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    return sum(char_width(ch) for ch in text)


def cell(value: Any) -> str:
    """A value as one table cell (not yet escaped): none is empty, a list is joined."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Aligned columns, ``GAP`` spaces apart, no trailing spaces; every cell escaped."""
    lines = [[escape(h) for h in headers]]
    lines += [[escape(cell(v)) for v in row] for row in rows]
    count = len(headers)
    for line in lines:
        if len(line) != count:
            raise ValueError(f"a row has {len(line)} cells, the table {count} columns")
    widths = [max(display_width(line[i]) for line in lines) for i in range(count)]
    out = []
    for line in lines:
        padded = [c + " " * (widths[i] - display_width(c)) for i, c in enumerate(line[:-1])]
        out.append((" " * GAP).join([*padded, line[-1]]).rstrip(" "))
    return "\n".join(out) + "\n"


def details(pairs: Sequence[tuple[str, Any]]) -> str:
    """``Key:   value`` lines, values aligned (kubectl describe's shape)."""
    width = max((display_width(escape(k)) for k, _ in pairs), default=0) + 2
    out = []
    for key, value in pairs:
        label = escape(key) + ":"
        pad = " " * (width - display_width(label))
        out.append(f"{label}{pad}{escape(cell(value))}".rstrip(" "))
    return "\n".join(out) + "\n"


def section(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A titled table indented under its title (``<none>`` for no rows)."""
    if not rows:
        return f"{escape(title)}:\n  <none>\n"
    body = table(headers, rows)
    return f"{escape(title)}:\n" + "".join(f"  {line}\n" for line in body.splitlines())


def to_json(value: Any) -> str:
    """Indented JSON, ASCII only (every other character as ``\\uXXXX``: nothing raw)."""
    return json.dumps(value, indent=2, ensure_ascii=True) + "\n"


def to_yaml(value: Any) -> str:
    """Block YAML; non-ASCII and non-printable characters written as escapes."""
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=False, default_flow_style=False)


def names(kind: str, refs: Iterable[str]) -> str:
    """``kind/ref`` lines, as ``kubectl get -o name``."""
    return "".join(f"{kind}/{escape(ref)}\n" for ref in refs)


def parse_time(value: Any) -> float | None:
    """Unix seconds from an RFC 3339 time the API gave; None if absent or not a time."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def age(value: Any, now: float) -> str:
    """How long ago an RFC 3339 time was, as kubectl shows ages: ``45s``, ``5m``, ``3h``,
    ``12d``, ``2y``; empty for no time, ``0s`` for a time ahead of the clock."""
    when = parse_time(value)
    if when is None:
        return ""
    return duration(max(0.0, now - when))


def duration(seconds: float) -> str:
    """``45s``, ``5m``, ``3h``, ``12d``, ``2y``: the largest unit with at least two of it
    (``90s``, ``119m``), as kubectl rounds ages."""
    s = int(seconds)
    for unit, size in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if s >= 2 * size:
            return f"{s // size}{unit}"
    return f"{s}s"


def until(value: Any, now: float) -> str:
    """Time left until an RFC 3339 time: ``in 3h``, ``expired``, ``never`` for none."""
    when = parse_time(value)
    if when is None:
        return "never"
    if when <= now:
        return "expired"
    return "in " + duration(when - now)


@dataclass(frozen=True)
class Column:
    """One column of a table: its header and how to get its cell from an item."""

    header: str
    get: Callable[[Mapping[str, Any]], Any]


def field(name: str, header: str | None = None) -> Column:
    return Column(header or name.upper(), lambda item: item.get(name))


def render(
    items: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    output: str | None,
    kind: str,
    name_of: Callable[[Mapping[str, Any]], str],
    empty: str = "",
) -> str:
    """A list of API objects as ``-o`` asks: a table (``empty`` on stderr's behalf when
    there are none is the caller's), JSON or YAML of the whole list, or names."""
    if output == "json":
        return to_json(list(items))
    if output == "yaml":
        return to_yaml(list(items))
    if output == "name":
        return names(kind, (name_of(item) for item in items))
    if not items:
        return empty
    return table([c.header for c in columns], ([c.get(item) for c in columns] for item in items))


def render_one(
    item: Mapping[str, Any],
    output: str | None,
    kind: str,
    name_of: Callable[[Mapping[str, Any]], str],
    describe: Callable[[Mapping[str, Any]], str],
) -> str:
    """One API object as ``-o`` asks; without ``-o``, ``describe(item)``."""
    if output == "json":
        return to_json(dict(item))
    if output == "yaml":
        return to_yaml(dict(item))
    if output == "name":
        return names(kind, [name_of(item)])
    return describe(item)


def by_id(item: Mapping[str, Any]) -> str:
    """An object's ``id`` (the name ``-o name`` prints for most kinds)."""
    return str(item.get("id"))


def outcome(
    item: Mapping[str, Any],
    output: str | None,
    kind: str,
    message: str,
    name_of: Callable[[Mapping[str, Any]], str] = by_id,
) -> str:
    """What a command that made, changed or removed one object prints: the object as
    ``-o`` asks, else ``message`` (a line for the person, already escaped)."""
    return render_one(item, output, kind, name_of, lambda _item: message)


def outcomes(
    items: Sequence[Mapping[str, Any]],
    output: str | None,
    kind: str,
    line: Callable[[Mapping[str, Any]], str],
    name_of: Callable[[Mapping[str, Any]], str] = by_id,
) -> str:
    """The same for several objects: the list as ``-o`` asks, else ``line(item)`` for
    each."""
    if output:
        return render(items, [], output, kind, name_of)
    return "".join(line(item) for item in items)

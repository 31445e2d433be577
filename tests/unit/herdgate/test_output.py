"""The CLI's output (herdgate/output.py): tables stay aligned and nothing a gateway
sends reaches the terminal raw."""

from __future__ import annotations

import json
import unicodedata

import yaml
from hypothesis import given
from hypothesis import strategies as st

from herdgate import output

DANGEROUS = "\x1b[31m\x07\x9b\u202e\u200b\r\n\t\x00\x7f\u2028"
"""An escape sequence, a bell, a C1 CSI, a right-to-left override, a zero-width space,
line breaks, a tab, NUL, DEL, a line separator."""

texts = st.text(max_size=12)


def raw_controls(text: str) -> list[str]:
    """Characters a terminal could act on (``\\n`` between lines is the only one allowed)."""
    return [
        ch
        for ch in text.replace("\n", "")
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
    ]


def column_starts(widths: list[int]) -> list[int]:
    starts, at = [], 0
    for width in widths:
        starts.append(at)
        at += width + output.GAP
    return starts


def text_at(line: str, column: int) -> str | None:
    """What of ``line`` starts at display column ``column`` (None: the line is shorter)."""
    at = 0
    for index, ch in enumerate(line):
        if at == column:
            return line[index:]
        at += output.char_width(ch)
    return "" if at == column else None


def test_escape_writes_control_and_format_characters_as_escapes() -> None:
    escaped = output.escape("dev" + DANGEROUS)
    assert escaped == ("dev\\x1b[31m\\x07\\x9b\\u202e\\u200b\\x0d\\x0a\\x09\\x00\\x7f\\u2028")
    assert output.escape("prod-ü-名前") == "prod-ü-名前"
    assert output.escape("\u0301a") == "\\u0301a"  # a combining mark opening a cell


@given(st.text())
def test_escape_leaves_nothing_a_terminal_acts_on(text: str) -> None:
    escaped = output.escape(text)
    assert raw_controls(escaped) == []
    assert "\n" not in escaped


def test_table_aligns_columns_like_kubectl() -> None:
    text = output.table(["NAME", "STATE"], [["dev", "active"], ["production", None]])
    assert text == "NAME         STATE\ndev          active\nproduction\n"


def test_table_measures_wide_characters_by_their_terminal_width() -> None:
    text = output.table(["NAME", "ID"], [["名前", "c-1"], ["ab", "c-2"]])
    assert text.splitlines() == ["NAME   ID", "名前   c-1", "ab     c-2"]


@given(
    st.integers(min_value=1, max_value=5).flatmap(
        lambda n: st.tuples(
            st.lists(texts, min_size=n, max_size=n),
            st.lists(st.lists(texts, min_size=n, max_size=n), max_size=6),
        )
    )
)
def test_any_table_is_aligned_and_safe(table: tuple[list[str], list[list[str]]]) -> None:
    headers, rows = table
    text = output.table(headers, rows)
    assert raw_controls(text) == []
    lines = text.split("\n")
    assert lines[-1] == "" and len(lines) == len(rows) + 2
    cells = [[output.escape(c) for c in row] for row in [headers, *rows]]
    widths = [max(output.display_width(row[i]) for row in cells) for i in range(len(headers))]
    starts = column_starts(widths)
    for line, row in zip(lines, cells, strict=False):
        assert not line.endswith(" ")
        for index, (start, value) in enumerate(zip(starts, row, strict=True)):
            rest = text_at(line, start)
            if rest is None:  # trailing blanks are not written
                assert "".join(row[index:]).strip(" ") == ""
                continue
            assert rest.startswith(value.rstrip(" "))


def test_details_and_sections() -> None:
    text = output.details([("Name", "dev"), ("Version", None), ("Roles", ["a", "b"])])
    assert text == "Name:    dev\nVersion:\nRoles:   a,b\n"
    assert output.section("Nodes", ["NAME"], []) == "Nodes:\n  <none>\n"
    assert output.section("Nodes", ["NAME"], [["n1"]]) == "Nodes:\n  NAME\n  n1\n"


@given(st.text())
def test_json_yaml_and_names_carry_no_raw_control_characters(name: str) -> None:
    item = {"name": name, "id": "c-1"}
    as_json = output.render([item], [], "json", "cluster", lambda c: c["name"])
    assert raw_controls(as_json) == [] and json.loads(as_json) == [item]
    assert as_json.isascii()
    as_yaml = output.render([item], [], "yaml", "cluster", lambda c: c["name"])
    assert raw_controls(as_yaml) == [] and yaml.safe_load(as_yaml) == [item]
    as_names = output.render([item], [], "name", "cluster", lambda c: c["name"])
    assert raw_controls(as_names) == [] and as_names.count("\n") == 1


def test_render_without_items_gives_the_empty_text() -> None:
    assert output.render([], [output.field("name")], None, "cluster", str, "none\n") == "none\n"
    assert output.render([], [], "json", "cluster", str) == "[]\n"


def test_ages_and_expiry_as_kubectl_shows_them() -> None:
    now = 1_800_000_000.0
    iso = "2027-01-15T08:00:00Z"
    when = output.parse_time(iso)
    assert when is not None
    assert output.age(iso, when + 45) == "45s"
    assert output.age(iso, when + 90) == "90s"
    assert output.age(iso, when + 150) == "2m"
    assert output.age(iso, when + 3 * 3600) == "3h"
    assert output.age(iso, when + 12 * 86400) == "12d"
    assert output.age(iso, when + 800 * 86400) == "2y"
    assert output.age(iso, when - 10) == "0s"
    assert output.age(None, now) == "" and output.age("yesterday", now) == ""
    assert output.until(None, now) == "never"
    assert output.until(iso, when + 1) == "expired"
    assert output.until(iso, when - 7200) == "in 2h"

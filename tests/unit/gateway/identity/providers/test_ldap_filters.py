"""Filters built by the LDAP provider: every outside value is escaped (no LDAP injection)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.identity.providers import ldap_filters as f
from gateway.identity.providers.ldap3_compat import (
    MATCH_EQUAL,
    MATCH_EXTENSIBLE,
    parse_filter,
    prepare_filter_for_sending,
)

INJECTIONS = [
    "*",
    "al*",
    "alice)(uid=*",
    "*)(|(uid=*",
    "alice)(|(objectClass=*)",
    "alice\\",
    "alice\x00",
    "\\2a",
    "(uid=*)",
    "admin*)((|userPassword=*)",
]


def _leaves(search_filter: str) -> list[tuple[int, dict[str, object]]]:
    """(tag, assertion) of each leaf, as ldap3 will send the filter."""
    root = parse_filter(search_filter, None, True, True, None, False)
    out: list[tuple[int, dict[str, object]]] = []

    def walk(node: object) -> None:
        elements = getattr(node, "elements", [])
        if not elements and getattr(node, "assertion", None) is not None:
            out.append((node.tag, node.assertion))  # type: ignore[attr-defined]
        for element in elements:
            walk(element)

    walk(root)
    return out


@pytest.mark.parametrize("username", INJECTIONS)
def test_injection_attempts_stay_one_equality_match(username: str) -> None:
    query = f.user_search("inetOrgPerson", "uid", username)
    leaves = _leaves(query)
    assert [tag for tag, _ in leaves] == [MATCH_EQUAL, MATCH_EQUAL]
    assertion = leaves[1][1]
    assert assertion["attr"] == "uid"
    # What goes on the wire is exactly the typed bytes, compared as one value.
    assert prepare_filter_for_sending(assertion["value"]) == username.encode()


def test_escape_examples() -> None:
    assert f.escape("*") == "\\2a"
    assert f.escape("a(b)c") == "a\\28b\\29c"
    assert f.escape("back\\slash") == "back\\5cslash"
    assert f.escape("nul\x00") == "nul\\00"
    assert f.escape("Zoë") == "Zoë"
    assert f.user_search("user", "sAMAccountName", "*)(|(uid=*") == (
        "(&(objectClass=user)(sAMAccountName=\\2a\\29\\28|\\28uid=\\2a))"
    )


@given(st.text(min_size=1, max_size=40))
def test_any_user_name_is_one_equality_value(username: str) -> None:
    query = f.user_search("inetOrgPerson", "uid", username, "(ou=staff)")
    leaves = _leaves(query)
    assert [tag for tag, _ in leaves] == [MATCH_EQUAL] * 3
    assert prepare_filter_for_sending(leaves[1][1]["value"]) == username.encode()
    assert "*" not in query.replace("\\2a", "")


def test_dn_values_are_escaped_in_member_filters() -> None:
    dn = "cn=Smith\\, John (QA),ou=people,dc=example,dc=org"
    query = f.groups_with_members(["groupOfNames", "posixGroup"], "member", [dn], "memberUid", "j*")
    assert query == (
        "(&(|(objectClass=groupOfNames)(objectClass=posixGroup))"
        "(|(member=cn=Smith\\5c, John \\28QA\\29,ou=people,dc=example,dc=org)(memberUid=j\\2a)))"
    )
    values = [prepare_filter_for_sending(a["value"]) for _, a in _leaves(query)]
    assert dn.encode() in values
    assert b"j*" in values


def test_in_chain_filter() -> None:
    query = f.groups_in_chain(["group"], "member", "cn=A (x),dc=corp", "(cn=k8s-*)")
    assert query == (
        "(&(objectClass=group)(member:1.2.840.113556.1.4.1941:=cn=A \\28x\\29,dc=corp)(cn=k8s-*))"
    )
    tags = [tag for tag, _ in _leaves(query)]
    assert MATCH_EXTENSIBLE in tags


def test_or_of_several_members() -> None:
    query = f.groups_with_members(["group"], "member", ["cn=a", "cn=b"])
    assert query == "(&(objectClass=group)(|(member=cn=a)(member=cn=b)))"
    with pytest.raises(ValueError, match="at least one"):
        f.groups_with_members(["group"], "member", [])


@pytest.mark.parametrize(
    "text",
    ["(a=1)", "(&(a=1)(b=2))", "(cn=\\28x\\29)", "(|(a=1)(!(b=2)))", "  (a=1)  ", ""],
)
def test_check_filter_accepts(text: str) -> None:
    assert f.check_filter(text) == text.strip()


@pytest.mark.parametrize("text", ["a=1", "(a=1", "(a=1))", "(a=1)(b=2)", "((a=1)", "(a=\\)"])
def test_check_filter_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="parenthes"):
        f.check_filter(text)


@pytest.mark.parametrize("name", ["uid", "sAMAccountName", "userPrincipalName", "x-y", "2.5.4.3"])
def test_check_attribute_accepts(name: str) -> None:
    assert f.check_attribute(name) == name


@pytest.mark.parametrize("name", ["", "uid=*", "(uid)", "u id", "1uid", "uid;binary"])
def test_check_attribute_rejects(name: str) -> None:
    with pytest.raises(ValueError, match="not an attribute"):
        f.check_attribute(name)

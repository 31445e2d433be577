"""DNs, principal ids, disabled accounts and nested groups, without a directory."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.identity.providers.ldap_model import (
    AVA,
    DisabledRule,
    UserAccountControl,
    canonical_dn,
    dn_key,
    format_dn,
    is_under,
    parse_dn,
    principal_dn,
    principal_id,
    resolve_nested,
    supports_in_chain,
    user_account_control,
)

# -- DNs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dn", "canonical"),
    [
        ("uid=alice,ou=people,dc=example,dc=org", "uid=alice,ou=people,dc=example,dc=org"),
        (
            "CN=Agents,OU=Groups,DC=corp,DC=example,DC=com",
            "cn=Agents,ou=Groups,dc=corp,dc=example,dc=com",
        ),
        ("cn = Dana Scully , ou=Accounts", "cn=Dana Scully,ou=Accounts"),
        ("cn=Smith\\, John (QA),dc=x", "cn=Smith\\, John (QA),dc=x"),
        ("cn=Smith\\2C John (QA),dc=x", "cn=Smith\\, John (QA),dc=x"),
        ("cn=Smith\\2c John,dc=x", "cn=Smith\\, John,dc=x"),
        ('cn=a\\+b\\=c\\\\d\\"e\\<f\\>g\\;h,dc=x', 'cn=a\\+b=c\\\\d\\"e\\<f\\>g\\;h,dc=x'),
        ("cn=\\ lead,dc=x", "cn=\\ lead,dc=x"),
        ("cn=trail\\ ,dc=x", "cn=trail\\ ,dc=x"),
        ("cn=\\#hash,dc=x", "cn=\\#hash,dc=x"),
        ("cn=Zo\\C3\\AB,dc=x", "cn=Zoë,dc=x"),
        ("cn=Zoë,dc=x", "cn=Zoë,dc=x"),
        ("cn=a+uid=b,dc=x", "cn=a+uid=b,dc=x"),
        ("2.5.4.3=x,DC=y", "2.5.4.3=x,dc=y"),
        ("cn=#04024869,dc=x", "cn=#04024869,dc=x"),
        ("", ""),
    ],
)
def test_canonical_dn(dn: str, canonical: str) -> None:
    assert canonical_dn(dn) == canonical
    assert canonical_dn(canonical) == canonical


@pytest.mark.parametrize(
    "dn",
    ["uid", "=x", "cn=x,", "cn=x,,dc=y", "c n=x", "cn=a;dc=b", "cn=\\zz", "cn=#123", "cn=\\ff"],
)
def test_invalid_dns(dn: str) -> None:
    with pytest.raises(ValueError, match="invalid DN"):
        parse_dn(dn)


def test_parse_dn_structure() -> None:
    assert parse_dn("cn=a+uid=b,dc=x") == (
        (AVA("cn", "a"), AVA("uid", "b")),
        (AVA("dc", "x"),),
    )


_types = st.sampled_from(["cn", "uid", "ou", "dc", "sAMAccountName", "2.5.4.3"])
_values = st.text(st.characters(codec="utf-8"), max_size=12)
_rdns = st.lists(
    st.lists(st.builds(AVA, _types, _values), min_size=1, max_size=2).map(tuple),
    min_size=1,
    max_size=4,
)


@given(_rdns)
def test_format_then_parse_round_trips(rdns: list[tuple[AVA, ...]]) -> None:
    text = format_dn(rdns)
    parsed = parse_dn(text)
    expected = tuple(
        tuple(AVA(a.type if a.type[0].isdigit() else a.type.lower(), a.value) for a in rdn)
        for rdn in rdns
    )
    assert parsed == expected
    assert canonical_dn(text) == text.replace("sAMAccountName=", "samaccountname=")


def test_dn_key_and_is_under() -> None:
    assert dn_key("CN=Agents,OU=Groups,DC=corp") == dn_key("cn=agents, ou=groups, dc=CORP")
    assert is_under("uid=alice,ou=people,dc=example,dc=org", "ou=People,DC=example,dc=org")
    assert is_under("ou=people,dc=example,dc=org", "ou=people,dc=example,dc=org")
    assert is_under("uid=alice,ou=people,dc=example,dc=org", "")
    assert not is_under("uid=alice,ou=people,dc=example,dc=org", "ou=groups,dc=example,dc=org")
    assert not is_under("dc=org", "dc=example,dc=org")
    # RDN boundaries, not string suffixes:
    assert not is_under("uid=x,ou=xpeople,dc=org", "ou=people,dc=org")
    assert not is_under("uid=x,ou=a\\,ou=people,dc=org", "ou=people,dc=org")


# -- principal ids -----------------------------------------------------------------


def test_principal_ids() -> None:
    dn = "CN=Dana Scully,OU=Accounts,DC=corp,DC=example,DC=com"
    user = principal_id("activedirectory", "user", dn)
    assert user == "activedirectory_user://cn=Dana Scully,ou=Accounts,dc=corp,dc=example,dc=com"
    assert principal_dn("activedirectory", "user", user) == canonical_dn(dn)
    group = principal_id("openldap", "group", "cn=ops, ou=groups, dc=example, dc=org")
    assert group == "openldap_group://cn=ops,ou=groups,dc=example,dc=org"


@pytest.mark.parametrize(
    "principal",
    [
        "openldap_group://cn=ops,dc=example,dc=org",
        "activedirectory_user://cn=x,dc=y",
        "openldap_user://",
        "openldap_user://not a dn",
        "local://u-abcde",
    ],
)
def test_principal_dn_rejects_other_principals(principal: str) -> None:
    with pytest.raises(ValueError):
        principal_dn("openldap", "user", principal)


# -- disabled accounts -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "disabled"),
    [
        ("512", False),  # NORMAL_ACCOUNT
        ("514", True),  # NORMAL_ACCOUNT | ACCOUNTDISABLE
        ("66048", False),  # NORMAL_ACCOUNT | DONT_EXPIRE_PASSWORD
        ("66050", True),
        ("544", False),  # NORMAL_ACCOUNT | PASSWD_NOTREQD
        ("2", True),
        ("-2147483646", True),  # signed rendering of 0x80000002
        (" 514 ", True),
        ("not a number", True),  # fail closed
    ],
)
def test_user_account_control_disabled_bit(value: str, disabled: bool) -> None:
    rule = DisabledRule("userAccountControl", bitmask=UserAccountControl.ACCOUNTDISABLE)
    assert rule.is_disabled([value]) is disabled


def test_user_account_control_decoding() -> None:
    flags = user_account_control("66050")
    assert UserAccountControl.ACCOUNTDISABLE in flags
    assert UserAccountControl.NORMAL_ACCOUNT in flags
    assert UserAccountControl.DONT_EXPIRE_PASSWORD in flags
    assert UserAccountControl.LOCKOUT not in flags


def test_disabled_rules() -> None:
    assert not DisabledRule().is_disabled(["anything"])
    locked = DisabledRule("pwdAccountLockedTime")
    assert locked.is_disabled(["000001010000Z"])
    assert not locked.is_disabled([])
    flag = DisabledRule("employeeType", value="Disabled")
    assert flag.is_disabled(["staff", "disabled"])
    assert not flag.is_disabled(["staff"])
    assert not flag.is_disabled([])


# -- nested groups -----------------------------------------------------------------


def _parents(
    graph: dict[str, list[str]], calls: list[list[str]]
) -> Callable[[Sequence[str]], list[str]]:
    def lookup(dns: Sequence[str]) -> list[str]:
        calls.append(list(dns))
        return [parent for dn in dns for parent in graph.get(dn_key(dn), [])]

    return lookup


def test_nesting_chain_is_followed_breadth_first() -> None:
    graph = {
        "cn=agents,dc=x": ["cn=FBI,dc=x"],
        "cn=fbi,dc=x": ["cn=Government,dc=x"],
    }
    calls: list[list[str]] = []
    result = resolve_nested(["CN=Agents,DC=x"], _parents(graph, calls), max_depth=8)
    assert result.groups == ("cn=Agents,dc=x", "cn=FBI,dc=x", "cn=Government,dc=x")
    assert not result.truncated
    assert calls == [["cn=Agents,dc=x"], ["cn=FBI,dc=x"], ["cn=Government,dc=x"]]


def test_nesting_cycles_end() -> None:
    graph = {
        "cn=a,dc=x": ["cn=b,dc=x"],
        "cn=b,dc=x": ["cn=c,dc=x", "CN=A,DC=X"],
        "cn=c,dc=x": ["cn=a,dc=x", "cn=c,dc=x"],
    }
    calls: list[list[str]] = []
    result = resolve_nested(["cn=a,dc=x"], _parents(graph, calls), max_depth=100)
    assert result.groups == ("cn=a,dc=x", "cn=b,dc=x", "cn=c,dc=x")
    assert not result.truncated
    assert len(calls) == 3  # each group asked about once


def test_nesting_diamond_and_duplicates() -> None:
    graph = {
        "cn=a,dc=x": ["cn=top,dc=x"],
        "cn=b,dc=x": ["cn=top,dc=x"],
    }
    result = resolve_nested(["cn=a,dc=x", "cn=b,dc=x", "CN=a,dc=x"], _parents(graph, []), 8)
    assert result.groups == ("cn=a,dc=x", "cn=b,dc=x", "cn=top,dc=x")


def test_nesting_depth_bound() -> None:
    graph = {f"cn=g{i},dc=x": [f"cn=g{i + 1},dc=x"] for i in range(50)}
    result = resolve_nested(["cn=g0,dc=x"], _parents(graph, []), max_depth=3)
    assert result.groups == ("cn=g0,dc=x", "cn=g1,dc=x", "cn=g2,dc=x", "cn=g3,dc=x")
    assert result.truncated
    off = resolve_nested(["cn=g0,dc=x"], _parents(graph, []), max_depth=0)
    assert off.groups == ("cn=g0,dc=x",)
    assert off.truncated


def test_nesting_without_groups_asks_nothing() -> None:
    calls: list[list[str]] = []
    result = resolve_nested([], _parents({}, calls), 8)
    assert result.groups == ()
    assert calls == []


@given(st.dictionaries(st.integers(0, 12), st.lists(st.integers(0, 12), max_size=4)))
def test_nesting_terminates_on_any_graph(edges: dict[int, list[int]]) -> None:
    graph = {f"cn=g{k},dc=x": [f"cn=g{v},dc=x" for v in vs] for k, vs in edges.items()}
    calls: list[list[str]] = []
    result = resolve_nested(["cn=g0,dc=x"], _parents(graph, calls), max_depth=100)
    # Exactly the groups reachable from g0, each asked about at most once.
    reachable, stack = {0}, [0]
    while stack:
        for parent in edges.get(stack.pop(), []):
            if parent not in reachable:
                reachable.add(parent)
                stack.append(parent)
    assert {dn_key(g) for g in result.groups} == {f"cn=g{i},dc=x" for i in reachable}
    asked = [dn for call in calls for dn in call]
    assert len(asked) == len(set(asked)) == len(reachable)


# -- in-chain detection ------------------------------------------------------------


def test_in_chain_detection() -> None:
    ad = {
        "supportedCapabilities": [
            "1.2.840.113556.1.4.800",
            "1.2.840.113556.1.4.1670",
            "1.2.840.113556.1.4.1791",
        ]
    }
    assert supports_in_chain(ad)
    assert supports_in_chain({"supportedcapabilities": ["1.2.840.113556.1.4.1851"]})
    assert not supports_in_chain({"vendorName": ["OpenLDAP"]})
    assert not supports_in_chain({})

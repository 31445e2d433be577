"""Search filters for the LDAP provider, with every value escaped (no I/O).

Values that come from outside (the typed user name, DNs read from the directory)
only ever enter a filter through :func:`escape`, ldap3's RFC 4515 escaping, so
``*``, ``(``, ``)``, ``\\`` and NUL cannot widen a search or add terms. Filters
and attribute names from the configuration are checked once, at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from gateway.identity.providers.ldap3_compat import escape_filter_chars

IN_CHAIN_RULE = "1.2.840.113556.1.4.1941"
"""LDAP_MATCHING_RULE_IN_CHAIN: Active Directory walks ``member`` links transitively."""

_ATTRIBUTE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)$")


def _hex(text: str) -> str:
    return "".join(f"\\{byte:02x}" for byte in text.encode("utf-8"))


def escape(value: str) -> str:
    """``value`` as an RFC 4515 assertion value: ``*()\\`` and NUL become ``\\XX``.

    Leading and trailing white space is hex-escaped as well: ldap3's filter parser
    strips it, which would turn ``" "`` into an empty value.
    """
    escaped = str(escape_filter_chars(value))
    core = escaped.strip()
    if not core:
        return _hex(escaped)
    head = escaped[: len(escaped) - len(escaped.lstrip())]
    tail = escaped[len(escaped.rstrip()) :]
    return _hex(head) + core + _hex(tail)


def check_attribute(name: str) -> str:
    """A configured attribute description (``uid``, ``sAMAccountName``, an OID)."""
    if not _ATTRIBUTE.match(name):
        raise ValueError(f"{name!r} is not an attribute name")
    return name


def check_filter(text: str) -> str:
    """A configured extra filter: one parenthesised, balanced filter, or empty."""
    text = text.strip()
    if not text:
        return ""
    if not (text.startswith("(") and text.endswith(")")):
        raise ValueError("a filter must be enclosed in parentheses, e.g. (objectClass=person)")
    depth = 0
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0 or (depth == 0 and index != len(text) - 1):
                raise ValueError("unbalanced parentheses (write several terms as (&(a=1)(b=2)))")
    if depth != 0 or escaped:
        raise ValueError("unbalanced parentheses")
    return text


def equals(attribute: str, value: str) -> str:
    return f"({attribute}={escape(value)})"


def in_chain(attribute: str, dn: str) -> str:
    """Entries whose ``attribute`` reaches ``dn`` through any chain of links (AD only)."""
    return f"({attribute}:{IN_CHAIN_RULE}:={escape(dn)})"


def all_of(*parts: str) -> str:
    terms = [p for p in parts if p]
    if not terms:
        raise ValueError("an AND filter needs at least one term")
    return terms[0] if len(terms) == 1 else "(&" + "".join(terms) + ")"


def any_of(parts: Iterable[str]) -> str:
    terms = [p for p in parts if p]
    if not terms:
        raise ValueError("an OR filter needs at least one term")
    return terms[0] if len(terms) == 1 else "(|" + "".join(terms) + ")"


def object_classes(names: Sequence[str]) -> str:
    return any_of(equals("objectClass", name) for name in names)


def user_search(object_class: str, login_attribute: str, username: str, extra: str = "") -> str:
    """The user whose ``login_attribute`` is exactly ``username``."""
    return all_of(equals("objectClass", object_class), equals(login_attribute, username), extra)


def user_entry(object_class: str, extra: str = "") -> str:
    """Reading a known user by DN (base scope): still a user, still matching ``extra``."""
    return all_of(equals("objectClass", object_class), extra)


def groups_with_members(
    classes: Sequence[str],
    member_attribute: str,
    member_dns: Sequence[str],
    uid_attribute: str = "",
    uid: str = "",
    extra: str = "",
) -> str:
    """Groups that list any of ``member_dns`` (or, posixGroup-style, ``uid``)."""
    members = [equals(member_attribute, dn) for dn in member_dns]
    if uid_attribute and uid:
        members.append(equals(uid_attribute, uid))
    return all_of(object_classes(classes), any_of(members), extra)


def groups_in_chain(classes: Sequence[str], member_attribute: str, dn: str, extra: str = "") -> str:
    """Every group ``dn`` belongs to, directly or through nested groups (AD)."""
    return all_of(object_classes(classes), in_chain(member_attribute, dn), extra)

"""What the LDAP provider reads out of entries (no I/O): DNs and principal ids,
disabled accounts (Active Directory's ``userAccountControl``), nested groups.

DNs are kept in one canonical RFC 4514 form, so that the same group reached by a
search, through ``memberOf`` or through nesting gives the same principal id:
attribute types in lower case, no spaces around separators, values unescaped and
escaped again minimally (``cn=Smith\\2C John`` and ``CN = Smith\\, John`` are both
``cn=Smith\\, John``). Value case is kept; comparisons use :func:`dn_key`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

PrincipalKind = Literal["user", "group"]

_TYPE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)$")
_HEX = "0123456789abcdefABCDEF"
_ESCAPABLE = ' "#+,;<=>\\'
_MUST_ESCAPE = '"+,;<>\\'


@dataclass(frozen=True, slots=True)
class AVA:
    """One ``type=value`` of an RDN; ``value`` is unescaped text, or hex for ``#`` values."""

    type: str
    value: str
    hex: bool = False


RDN = tuple[AVA, ...]


def parse_dn(dn: str) -> tuple[RDN, ...]:
    """The RDNs of an RFC 4514 DN, most specific first; ``()`` for the empty DN."""
    if not dn.strip():
        return ()
    rdns: list[RDN] = []
    avas: list[AVA] = []
    i, n = 0, len(dn)
    while True:
        while i < n and dn[i] == " ":
            i += 1
        equal = dn.find("=", i)
        if equal < 0:
            raise ValueError(f"invalid DN {dn!r}: missing '='")
        attr = dn[i:equal].strip()
        if not _TYPE.match(attr):
            raise ValueError(f"invalid DN {dn!r}: bad attribute type {attr!r}")
        i = equal + 1
        while i < n and dn[i] == " ":
            i += 1
        if i < n and dn[i] == "#":
            start = i + 1
            i = start
            while i < n and dn[i] in _HEX:
                i += 1
            digits = dn[start:i]
            if not digits or len(digits) % 2:
                raise ValueError(f"invalid DN {dn!r}: bad hex value")
            ava = AVA(attr if attr[0].isdigit() else attr.lower(), digits.lower(), hex=True)
        else:
            value, i = _read_value(dn, i)
            ava = AVA(attr if attr[0].isdigit() else attr.lower(), value)
        avas.append(ava)
        while i < n and dn[i] == " ":
            i += 1
        if i >= n:
            rdns.append(tuple(avas))
            return tuple(rdns)
        if dn[i] == "+":
            i += 1
        elif dn[i] == ",":
            rdns.append(tuple(avas))
            avas = []
            i += 1
        else:
            raise ValueError(f"invalid DN {dn!r}: unexpected {dn[i]!r}")


def _read_value(dn: str, i: int) -> tuple[str, int]:
    out = bytearray()
    keep = 0  # bytes up to here are kept even if they are spaces (escaped)
    n = len(dn)
    while i < n and dn[i] not in ",+":
        char = dn[i]
        if char == "\\":
            pair = dn[i + 1 : i + 3]
            if len(pair) == 2 and pair[0] in _HEX and pair[1] in _HEX:
                out.append(int(pair, 16))
                i += 3
                keep = len(out)
                continue
            if i + 1 < n and dn[i + 1] in _ESCAPABLE:
                out += dn[i + 1].encode()
                i += 2
                keep = len(out)
                continue
            raise ValueError(f"invalid DN {dn!r}: bad escape at {i}")
        if char == ";":
            raise ValueError(f"invalid DN {dn!r}: unescaped ';'")
        out += char.encode()
        if char != " ":
            keep = len(out)
        i += 1
    del out[keep:]  # unescaped trailing spaces are not part of the value
    try:
        return out.decode("utf-8"), i
    except UnicodeDecodeError:
        raise ValueError(f"invalid DN {dn!r}: value is not UTF-8") from None


def escape_dn_value(value: str) -> str:
    """RFC 4514 section 2.4 escaping of one attribute value."""
    out: list[str] = []
    last = len(value) - 1
    for index, char in enumerate(value):
        if char in _MUST_ESCAPE or (index == 0 and char in " #") or (index == last and char == " "):
            out.append("\\" + char)
        elif char == "\x00":
            out.append("\\00")
        else:
            out.append(char)
    return "".join(out)


def format_dn(rdns: Sequence[RDN]) -> str:
    return ",".join(
        "+".join(
            f"{ava.type}=#{ava.value}" if ava.hex else f"{ava.type}={escape_dn_value(ava.value)}"
            for ava in rdn
        )
        for rdn in rdns
    )


def canonical_dn(dn: str) -> str:
    """``dn`` in the canonical form used in principal ids; ValueError if invalid."""
    return format_dn(parse_dn(dn))


def dn_key(dn: str) -> str:
    """A comparison key: the canonical DN, case-folded (directory names compare without case)."""
    return canonical_dn(dn).casefold()


def is_under(dn: str, base: str) -> bool:
    """Whether ``dn`` is ``base`` or lies below it."""
    entry = [format_dn([rdn]).casefold() for rdn in parse_dn(dn)]
    suffix = [format_dn([rdn]).casefold() for rdn in parse_dn(base)]
    return not suffix or (len(entry) >= len(suffix) and entry[-len(suffix) :] == suffix)


def principal_id(provider: str, kind: PrincipalKind, dn: str) -> str:
    """``openldap_user://<dn>``, ``activedirectory_group://<dn>`` and so on."""
    return f"{provider}_{kind}://{canonical_dn(dn)}"


def principal_dn(provider: str, kind: PrincipalKind, principal: str) -> str:
    """The DN inside a principal id of this provider and kind; ValueError otherwise."""
    prefix = f"{provider}_{kind}://"
    if not principal.startswith(prefix):
        raise ValueError(f"{principal!r} is not an {provider}_{kind} principal")
    dn = principal[len(prefix) :]
    if not dn:
        raise ValueError(f"{principal!r} has no DN")
    return canonical_dn(dn)


class UserAccountControl(enum.IntFlag):
    """Active Directory's ``userAccountControl`` bits (MS-ADTS 2.2.16)."""

    SCRIPT = 0x1
    ACCOUNTDISABLE = 0x2
    HOMEDIR_REQUIRED = 0x8
    LOCKOUT = 0x10
    PASSWD_NOTREQD = 0x20
    PASSWD_CANT_CHANGE = 0x40
    ENCRYPTED_TEXT_PWD_ALLOWED = 0x80
    TEMP_DUPLICATE_ACCOUNT = 0x100
    NORMAL_ACCOUNT = 0x200
    INTERDOMAIN_TRUST_ACCOUNT = 0x800
    WORKSTATION_TRUST_ACCOUNT = 0x1000
    SERVER_TRUST_ACCOUNT = 0x2000
    DONT_EXPIRE_PASSWORD = 0x10000
    MNS_LOGON_ACCOUNT = 0x20000
    SMARTCARD_REQUIRED = 0x40000
    TRUSTED_FOR_DELEGATION = 0x80000
    NOT_DELEGATED = 0x100000
    USE_DES_KEY_ONLY = 0x200000
    DONT_REQ_PREAUTH = 0x400000
    PASSWORD_EXPIRED = 0x800000
    TRUSTED_TO_AUTH_FOR_DELEGATION = 0x1000000
    PARTIAL_SECRETS_ACCOUNT = 0x4000000


def parse_int_flags(text: str) -> int:
    """An integer attribute as an unsigned 32-bit value (AD may send it signed)."""
    return int(text.strip()) & 0xFFFFFFFF


def user_account_control(text: str) -> UserAccountControl:
    return UserAccountControl(parse_int_flags(text))


@dataclass(frozen=True, slots=True)
class DisabledRule:
    """When an entry counts as a disabled account.

    ``attribute`` empty: never. ``bitmask``: the attribute is an integer and any of
    these bits set means disabled (AD: ``userAccountControl`` & 0x2). Else
    ``value``: disabled when the attribute holds it (case-insensitive), or when the
    attribute is present at all if ``value`` is empty (``pwdAccountLockedTime``).
    A value that cannot be read as an integer counts as disabled (fail closed).
    """

    attribute: str = ""
    value: str = ""
    bitmask: int = 0

    def is_disabled(self, values: Sequence[str]) -> bool:
        if not self.attribute or not values:
            return False
        if self.bitmask:
            try:
                return any(parse_int_flags(v) & self.bitmask for v in values)
            except ValueError:
                return True
        if not self.value:
            return True
        wanted = self.value.casefold()
        return any(v.casefold() == wanted for v in values)


@dataclass(frozen=True, slots=True)
class Nesting:
    groups: tuple[str, ...]
    """Direct groups first, then each level of parents (canonical DNs, no duplicates)."""
    truncated: bool
    """Parents remained when ``max_depth`` levels had been resolved."""


def resolve_nested(
    direct: Iterable[str],
    parents_of: Callable[[Sequence[str]], Iterable[str]],
    max_depth: int,
) -> Nesting:
    """Groups of a user, following groups that are members of groups, breadth first.

    ``parents_of(dns)`` names the groups that list any of ``dns`` as a member. Each
    group is asked about once, so membership cycles end; at most ``max_depth``
    levels above the direct groups are read.
    """
    seen: dict[str, str] = {}
    frontier: list[str] = []
    for dn in direct:
        canonical = canonical_dn(dn)
        if (key := canonical.casefold()) not in seen:
            seen[key] = canonical
            frontier.append(canonical)
    depth = 0
    while frontier:
        if depth >= max_depth:
            return Nesting(tuple(seen.values()), truncated=True)
        depth += 1
        found: list[str] = []
        for dn in parents_of(frontier):
            canonical = canonical_dn(dn)
            if (key := canonical.casefold()) not in seen:
                seen[key] = canonical
                found.append(canonical)
        frontier = found
    return Nesting(tuple(seen.values()), truncated=False)


AD_CAPABILITIES = frozenset(
    {
        "1.2.840.113556.1.4.800",  # LDAP_CAP_ACTIVE_DIRECTORY_OID
        "1.2.840.113556.1.4.1851",  # LDAP_CAP_ACTIVE_DIRECTORY_ADAM_OID (AD LDS)
    }
)


def supports_in_chain(root_dse: Mapping[str, Sequence[str]]) -> bool:
    """Whether the server evaluates LDAP_MATCHING_RULE_IN_CHAIN, judged by its root DSE.

    Active Directory (and AD LDS, Samba AD) announce themselves in
    ``supportedCapabilities``; OpenLDAP does not implement the rule and would
    silently match nothing, so anything else resolves nesting client-side.
    """
    lowered = {key.lower(): values for key, values in root_dse.items()}
    capabilities = {v.strip() for v in lowered.get("supportedcapabilities", ())}
    return bool(capabilities & AD_CAPABILITIES)

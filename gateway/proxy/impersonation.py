"""The whole rewrite of the request headers the API server gets (pure: no I/O), not only
impersonation: ``forwarded_headers`` decides which of the client's lines go upstream
and refuses an ambiguous or dangerous one with ``UnsafeHead`` (a 400, which
``gateway.proxy.handler._send`` answers); ``identity_block`` writes who the caller is.

The caller's credentials, every client-sent ``Impersonate-*`` header and the
hop-by-hop headers are removed; the gateway then states who the caller is with
``Impersonate-User``/``-Group``/``-Extra-*`` headers, which only the agent's
privileged service account may send to the API server.

Also removed, because an API server or a proxy in front of it may believe them: the
front-proxy identity headers (``X-Remote-User/Group/Extra-*``, kube-apiserver's
request-header authentication), client-claimed addresses (``X-Forwarded-*``,
``X-Real-Ip``, ``Forwarded``; the proxy states the client's address itself), and a
bearer token carried as a WebSocket subprotocol
(``base64url.bearer.authorization.k8s.io.<token>``, which kube-apiserver also reads).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import quote

from ace.records import EXTRA_PRINCIPAL_ID, EXTRA_USERNAME
from config.identity import Identity
from gateway.proxy.heads import CheckedFields, UnsafeHead, field_block

SYSTEM_AUTHENTICATED = "system:authenticated"
ROLE_GROUP_PREFIX = "herdgate:"
"""Role groups (``herdgate:cluster-owner`` ...) that downstream RBAC binds to roles."""

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
"""RFC 9110 section 7.6.1, plus the legacy ``proxy-connection``."""

_DROPPED = HOP_BY_HOP | {
    b"authorization",
    b"host",
    b"cookie",
    b"expect",
    b"content-length",
    # The gateway sets its own request id (it is also the API server's audit id).
    b"audit-id",
    b"x-request-id",
    # Claims about the client's address: the proxy sets X-Forwarded-For itself.
    b"forwarded",
    b"x-real-ip",
}
IMPERSONATE_PREFIX = b"impersonate-"
_DROPPED_PREFIXES = (b"x-remote-", b"x-forwarded-")
"""Front-proxy identity (kube-apiserver's ``--requestheader-*`` defaults) and
forwarding claims, any suffix."""
_SINGLE = (b"host", b"authorization")
_WEBSOCKET_PROTOCOL = b"sec-websocket-protocol"
_BEARER_PROTOCOL = b"base64url.bearer.authorization.k8s.io."

# RFC 9110 token characters that may stay unescaped in a header name.
_TOKEN_SAFE = "!#$&'*+-.^_`|~"


def client_impersonation(headers: Iterable[Header]) -> list[Header]:
    """The ``Impersonate-*`` headers a client sent (any letter case)."""
    return [(k, v) for k, v in headers if k.lower().startswith(IMPERSONATE_PREFIX)]


def extra_header_name(key: str) -> bytes:
    """``Impersonate-Extra-<key>`` with the key percent-encoded as Kubernetes requires."""
    return b"Impersonate-Extra-" + quote(key, safe=_TOKEN_SAFE).encode("ascii")


_OWS = " \t"


def _value(value: str) -> bytes:
    """An identity value as a field value: control characters percent-encoded (a value
    cannot carry line breaks), and so are spaces and tabs at either end, which every
    HTTP parser trims (RFC 9110 5.5): a provider's group ``ops `` must not reach the API
    server as group ``ops``."""
    if not value.isprintable():
        value = "".join(ch if ch.isprintable() else quote(ch, safe="") for ch in value)
    if value and (value[0] in _OWS or value[-1] in _OWS):
        start = len(value) - len(value.lstrip(_OWS))
        end = max(start, len(value.rstrip(_OWS)))
        value = quote(value[:start]) + value[start:end] + quote(value[end:])
    return value.encode("utf-8")


@lru_cache(maxsize=4096)
def impersonation_headers(identity: Identity, role: str | None) -> tuple[Header, ...]:
    """Who the caller is, as the API server should see it (cached per identity)."""
    headers = [(b"Impersonate-User", _value(identity.user_id))]
    groups: list[str] = [*identity.groups]
    if role:
        groups.append(ROLE_GROUP_PREFIX + role)
    groups.append(SYSTEM_AUTHENTICATED)
    seen: set[str] = set()
    for group in groups:
        if group not in seen:
            seen.add(group)
            headers.append((b"Impersonate-Group", _value(group)))
    headers.append((extra_header_name(EXTRA_USERNAME), _value(identity.username)))
    headers.append((extra_header_name(EXTRA_PRINCIPAL_ID), _value(identity.principal_id)))
    return tuple(headers)


@lru_cache(maxsize=4096)
def identity_block(identity: Identity, role: str | None) -> CheckedFields:
    """``impersonation_headers`` as checked head lines (``gateway.proxy.heads``), cached."""
    return field_block(impersonation_headers(identity, role))


_USER = b"impersonate-user"
_UID = b"impersonate-uid"


def check_client_impersonation(headers: Iterable[Header]) -> None:
    """A client's own ``Impersonate-*`` (``kubectl --as``, which the cluster allowed:
    ``gateway.proxy.impersonation_review``) must name exactly one user, not
    empty, and at most one uid; else ``UnsafeHead`` (400). kube-apiserver reads the
    first ``Impersonate-User`` and refuses groups, uid or extras without one; two users
    would leave the gateway's audit and the API server's disagreeing on who acted."""
    users: list[bytes] = []
    uids = 0
    present = False
    for key, value in headers:
        lower = key.lower()
        if not lower.startswith(IMPERSONATE_PREFIX):
            continue
        present = True
        if lower == _USER:
            users.append(value.strip(b" \t"))
        elif lower == _UID:
            uids += 1
    if not present:
        return
    if len(users) != 1:
        raise UnsafeHead("impersonation must name exactly one Impersonate-User")
    if not users[0]:
        raise UnsafeHead("an empty Impersonate-User")
    if uids > 1:
        raise UnsafeHead("more than one Impersonate-Uid")


def forwarded_headers(
    headers: Iterable[Header], *, keep_impersonation: bool, upgrade: bool
) -> list[Header]:
    """The client's headers that travel on to the API server.

    ``keep_impersonation`` keeps client ``Impersonate-*`` headers (a ``--as`` the cluster
    allowed),
    which must then pass ``check_client_impersonation``;
    ``upgrade`` keeps ``Connection: Upgrade`` and ``Upgrade`` for exec/attach/port-forward.
    Two ``Host`` or two ``Authorization`` fields make the request ambiguous (which one
    did the gateway check?): ``UnsafeHead``.
    """
    out: list[Header] = []
    listed: set[bytes] = set()
    singles: list[bytes] = []
    if keep_impersonation:
        headers = list(headers)  # read twice
        check_client_impersonation(headers)
    for key, value in headers:
        lower = key.lower()
        if lower in _DROPPED:
            if lower in _SINGLE:
                if lower in singles:
                    raise UnsafeHead(f"more than one {lower.decode()} header field")
                singles.append(lower)
            elif lower == b"connection":
                listed.update(t.strip().lower() for t in value.split(b",") if t.strip())
            elif upgrade and lower == b"upgrade":
                out.append((key, value))
            continue
        if not keep_impersonation and lower.startswith(IMPERSONATE_PREFIX):
            continue
        if lower[:2] == b"x-" and lower.startswith(_DROPPED_PREFIXES):
            continue
        if lower == _WEBSOCKET_PROTOCOL and _BEARER_PROTOCOL in value.lower():
            kept = [p for p in value.split(b",") if _BEARER_PROTOCOL not in p.lower()]
            if kept:
                out.append((key, b",".join(kept)))
            continue
        out.append((key, value))
    listed.discard(b"upgrade")
    if listed:  # names listed in Connection are hop-by-hop too (rare)
        out = [(key, value) for key, value in out if key.lower() not in listed]
    if upgrade:
        out.append((b"Connection", b"Upgrade"))
    return out

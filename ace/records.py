"""The records the gateway keeps in the cluster, and the decision made from them (pure).

``ClusterAuthToken`` and ``ClusterUserAttribute`` objects (group ``auth.herdgate.dev``,
version ``v1``, namespaced) arrive from the watch as plain mappings; they are turned
into frozen records once, on arrival, so a review is two dictionary lookups, one
SHA3-512 and a few comparisons. A field that is missing or has the wrong type never
makes a token valid: such a record is kept with a ``problem`` and refuses every token.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ace.hashes import is_supported, verify_token
from config.identity import Identity

GROUP = "auth.herdgate.dev"
VERSION = "v1"
TOKEN_KIND = "ClusterAuthToken"
TOKEN_PLURAL = "clusterauthtokens"
USER_KIND = "ClusterUserAttribute"
USER_PLURAL = "clusteruserattributes"

EXTRA_USERNAME = "username"
"""The key of the caller's user name among the extra fields the API server sees: the
gateway's ``Impersonate-Extra-username`` and the webhook's ``userInfo.extra``, the same
on both paths."""
EXTRA_PRINCIPAL_ID = "principalid"
"""The key of the caller's principal id among those extra fields (``Impersonate-Extra-
principalid``, ``userInfo.extra``)."""


class Reason(enum.StrEnum):
    """Why a token was refused; sent as ``status.error`` (never names the secret)."""

    MALFORMED = "malformed token: expected <token id>:<secret>"
    UNKNOWN_TOKEN = "unknown token"
    BAD_TOKEN_RECORD = "invalid ClusterAuthToken record"
    UNSUPPORTED_HASH = "the token's stored hash has an unsupported format"
    WRONG_SECRET = "invalid token secret"
    TOKEN_DISABLED = "token is disabled"
    TOKEN_EXPIRED = "token has expired"
    UNKNOWN_USER = "no ClusterUserAttribute for the token's user"
    BAD_USER_RECORD = "invalid ClusterUserAttribute record"
    USER_DISABLED = "user is not enabled"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    name: str
    user_id: str = ""
    hash: str = field(default="", repr=False)
    expires_at: float = math.inf
    """Seconds since the epoch; ``inf`` means never."""
    enabled: bool = False
    problem: str = ""
    """Empty when the object is well-formed; else what is wrong (the token is refused)."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    name: str
    """The herdgate user id (``u-xxxxx``)."""
    username: str = ""
    principal_id: str = ""
    groups: tuple[str, ...] = ()
    enabled: bool = False
    problem: str = ""


@dataclass(frozen=True, slots=True)
class Accepted:
    identity: Identity


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Reason
    token_id: str = ""
    """The token id when a record of that name exists (safe to log), else empty."""


Decision = Accepted | Rejected


def object_name(obj: Mapping[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    name = metadata.get("name")
    return name if isinstance(name, str) and name else None


def parse_expiry(value: Any) -> float | None:
    """``expiresAt`` as epoch seconds: empty or absent is ``inf`` (never); ``None`` if invalid.

    RFC 3339 requires an offset, so a time without one is invalid rather than guessed.
    """
    if value is None or value == "":
        return math.inf
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value)
        if when.tzinfo is None:
            return None
        return when.timestamp()
    except (ValueError, OverflowError):
        return None


def token_from_object(obj: Mapping[str, Any]) -> TokenRecord | None:
    """A ClusterAuthToken as a record; ``None`` only when it has no name."""
    name = object_name(obj)
    if name is None:
        return None
    user_id, stored, enabled = obj.get("userName"), obj.get("hash"), obj.get("enabled")
    expires_at = parse_expiry(obj.get("expiresAt"))
    problem = ""
    if not isinstance(user_id, str) or not user_id:
        problem = "userName must be a non-empty string"
    elif not isinstance(stored, str):
        problem = "hash must be a string"
    elif not isinstance(enabled, bool):
        problem = "enabled must be true or false"
    elif expires_at is None:
        problem = "expiresAt must be an RFC 3339 time or empty"
    if problem:
        return TokenRecord(name, problem=problem)
    assert isinstance(user_id, str) and isinstance(stored, str) and isinstance(enabled, bool)
    assert expires_at is not None
    return TokenRecord(name, user_id, stored, expires_at, enabled)


def _or(value: Any, default: Any) -> Any:
    """JSON null counts as absent."""
    return default if value is None else value


def user_from_object(obj: Mapping[str, Any]) -> UserRecord | None:
    """A ClusterUserAttribute as a record; ``None`` only when it has no name."""
    name = object_name(obj)
    if name is None:
        return None
    username = _or(obj.get("username"), "")
    principal_id = _or(obj.get("principalId"), "")
    groups = _or(obj.get("groups"), [])
    enabled = obj.get("enabled")
    problem = ""
    if not isinstance(username, str):
        problem = "username must be a string"
    elif not isinstance(principal_id, str):
        problem = "principalId must be a string"
    elif not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        problem = "groups must be a list of non-empty strings"
    elif not isinstance(enabled, bool):
        problem = "enabled must be true or false"
    if problem:
        return UserRecord(name, problem=problem)
    assert isinstance(username, str) and isinstance(principal_id, str)
    assert isinstance(groups, list) and isinstance(enabled, bool)
    return UserRecord(name, username, principal_id, tuple(dict.fromkeys(groups)), enabled)


def split_token(token: str) -> tuple[str, str] | None:
    """``token-xxxxx:<secret>`` split at the first ``:``; ``None`` when either part is empty."""
    name, sep, secret = token.partition(":")
    if not sep or not name or not secret:
        return None
    return name, secret


Verifier = Callable[[str, str], bool]


def decide(
    token: str,
    tokens: Mapping[str, TokenRecord],
    users: Mapping[str, UserRecord],
    now: float,
    verify: Verifier = verify_token,
) -> Decision:
    """Accept ``token`` only if its record exists, its secret matches the stored hash, it is
    enabled and not expired, and its user's record exists and is enabled.

    The secret is checked before the token's state, so the reason logged for someone who
    does not hold the secret is never more than "unknown token" or "invalid token secret".
    """
    parts = split_token(token)
    if parts is None:
        return Rejected(Reason.MALFORMED)
    name, secret = parts
    record = tokens.get(name)
    if record is None:
        return Rejected(Reason.UNKNOWN_TOKEN)
    if record.problem:
        return Rejected(Reason.BAD_TOKEN_RECORD, name)
    if not is_supported(record.hash):
        return Rejected(Reason.UNSUPPORTED_HASH, name)
    if not verify(secret, record.hash):
        return Rejected(Reason.WRONG_SECRET, name)
    if not record.enabled:
        return Rejected(Reason.TOKEN_DISABLED, name)
    if now >= record.expires_at:
        return Rejected(Reason.TOKEN_EXPIRED, name)
    user = users.get(record.user_id)
    if user is None:
        return Rejected(Reason.UNKNOWN_USER, name)
    if user.problem:
        return Rejected(Reason.BAD_USER_RECORD, name)
    if not user.enabled:
        return Rejected(Reason.USER_DISABLED, name)
    return Accepted(
        Identity(
            user_id=user.name,
            username=user.username,
            principal_id=user.principal_id,
            groups=user.groups,
            token_id=name,
        )
    )

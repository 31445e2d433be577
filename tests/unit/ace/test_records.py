"""The decision made from the cached records, and how objects become records."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ace.records import (
    Accepted,
    Reason,
    Rejected,
    TokenRecord,
    UserRecord,
    decide,
    parse_expiry,
    split_token,
    token_from_object,
    user_from_object,
)
from gateway.identity import hashing

SECRET = hashing.new_secret()
NOW = 1_800_000_000.0  # 2027-01-15


def token_obj(**fields: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "auth.herdgate.dev/v1",
        "kind": "ClusterAuthToken",
        "metadata": {"name": "token-b7xk2", "namespace": "herdgate-system"},
        "userName": "u-abcde",
        "hash": hashing.hash_token(SECRET),
        "expiresAt": "",
        "enabled": True,
    }
    obj.update(fields)
    return {k: v for k, v in obj.items() if v is not ...}


def user_obj(**fields: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "auth.herdgate.dev/v1",
        "kind": "ClusterUserAttribute",
        "metadata": {"name": "u-abcde", "namespace": "herdgate-system"},
        "username": "alice",
        "principalId": "local://u-abcde",
        "groups": ["local://g-devs", "herdgate:cluster-member"],
        "enabled": True,
    }
    obj.update(fields)
    return {k: v for k, v in obj.items() if v is not ...}


def maps(
    token: dict[str, Any] | None = None, user: dict[str, Any] | None = None
) -> tuple[dict[str, TokenRecord], dict[str, UserRecord]]:
    tokens: dict[str, TokenRecord] = {}
    users: dict[str, UserRecord] = {}
    t = token_from_object(token if token is not None else token_obj())
    u = user_from_object(user if user is not None else user_obj())
    assert t is not None and u is not None
    tokens[t.name] = t
    users[u.name] = u
    return tokens, users


def run(bearer: str = f"token-b7xk2:{SECRET}", **kw: Any) -> Accepted | Rejected:
    tokens, users = maps(**kw)
    return decide(bearer, tokens, users, NOW)


def test_valid_token_gives_the_gateway_identity() -> None:
    result = run()
    assert isinstance(result, Accepted)
    identity = result.identity
    assert identity.user_id == "u-abcde"
    assert identity.username == "alice"
    assert identity.principal_id == "local://u-abcde"
    assert identity.groups == ("local://g-devs", "herdgate:cluster-member")
    assert identity.token_id == "token-b7xk2"


def reason(result: Accepted | Rejected) -> Reason:
    assert isinstance(result, Rejected), result
    return result.reason


@pytest.mark.parametrize(
    "token",
    ["", "token-b7xk2", f"token-b7xk2{SECRET}", ":" + SECRET, "token-b7xk2:", ":"],
    # ids that do not show the random secret: the same on every pytest process (-n)
    ids=["empty", "id-only", "no-colon", "no-id", "no-secret", "colon-only"],
)
def test_malformed_tokens(token: str) -> None:
    assert reason(run(token)) == Reason.MALFORMED


def test_split_at_the_first_colon() -> None:
    assert split_token("token-a:b:c") == ("token-a", "b:c")
    assert reason(run(f"token-b7xk2:{SECRET}:x")) == Reason.WRONG_SECRET


def test_unknown_token_does_not_name_it() -> None:
    result = run(f"token-zzzzz:{SECRET}")
    assert reason(result) == Reason.UNKNOWN_TOKEN
    assert isinstance(result, Rejected) and result.token_id == ""


def test_wrong_secret() -> None:
    wrong = "x" if not SECRET.endswith("x") else "y"
    result = run(f"token-b7xk2:{SECRET[:-1]}{wrong}")
    assert reason(result) == Reason.WRONG_SECRET
    assert isinstance(result, Rejected) and result.token_id == "token-b7xk2"


def test_disabled_token() -> None:
    assert reason(run(token=token_obj(enabled=False))) == Reason.TOKEN_DISABLED


def test_wrong_secret_is_reported_before_the_token_state() -> None:
    result = run(f"token-b7xk2:{SECRET}x", token=token_obj(enabled=False))
    assert reason(result) == Reason.WRONG_SECRET


@pytest.mark.parametrize(
    ("expires", "ok"),
    [
        ("", True),
        (..., True),  # absent
        (None, True),
        ("2027-01-15T08:00:01Z", True),  # NOW + 1 s
        ("2027-01-15T08:00:00Z", False),  # exactly NOW
        ("2027-01-15T07:59:59Z", False),
        ("2027-01-15T09:00:01+01:00", True),
        ("2027-01-15T08:00:00.5Z", True),
        ("2020-01-01T00:00:00Z", False),
    ],
)
def test_expiry(expires: Any, ok: bool) -> None:
    result = run(token=token_obj(expiresAt=expires))
    if ok:
        assert isinstance(result, Accepted)
    else:
        assert reason(result) == Reason.TOKEN_EXPIRED


def test_expiry_instant() -> None:
    assert parse_expiry("2027-01-15T08:00:00Z") == NOW
    assert parse_expiry("") == math.inf


@pytest.mark.parametrize(
    "expires",
    ["tomorrow", "2027-01-15T08:00:00", "2027-01-15", 1800000000, True, [], "2027-13-01T00:00:00Z"],
)
def test_unparseable_expiry_fails_closed(expires: Any) -> None:
    record = token_from_object(token_obj(expiresAt=expires))
    assert record is not None and record.problem
    assert reason(run(token=token_obj(expiresAt=expires))) == Reason.BAD_TOKEN_RECORD


@pytest.mark.parametrize(
    "fields",
    [
        {"enabled": ...},
        {"enabled": "true"},
        {"enabled": 1},
        {"userName": ...},
        {"userName": ""},
        {"userName": 5},
        {"hash": ...},
        {"hash": None},
    ],
)
def test_broken_token_records_refuse(fields: dict[str, Any]) -> None:
    assert reason(run(token=token_obj(**fields))) == Reason.BAD_TOKEN_RECORD


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain",
        "$2:1:c2FsdA==:aGFzaA==",
        "$3:1:!!!:???",
        "$3:1:c2FsdA==:aGFzaA==",  # digest too short
        "$3:1:c2FsdA==",
        "$scrypt$n=1,r=1,p=1$c2FsdA==$aGFzaA==",
    ],
)
def test_bad_hash_formats(stored: str) -> None:
    assert reason(run(token=token_obj(hash=stored))) == Reason.UNSUPPORTED_HASH


def test_missing_user() -> None:
    tokens, _ = maps()
    assert reason(decide(f"token-b7xk2:{SECRET}", tokens, {}, NOW)) == Reason.UNKNOWN_USER


def test_token_of_another_user() -> None:
    assert reason(run(token=token_obj(userName="u-other"))) == Reason.UNKNOWN_USER


def test_disabled_user() -> None:
    assert reason(run(user=user_obj(enabled=False))) == Reason.USER_DISABLED


@pytest.mark.parametrize(
    "fields",
    [
        {"enabled": ...},
        {"enabled": "yes"},
        {"groups": "herdgate:cluster-member"},
        {"groups": [1]},
        {"groups": [""]},
        {"username": 3},
        {"principalId": {}},
    ],
)
def test_broken_user_records_refuse(fields: dict[str, Any]) -> None:
    assert reason(run(user=user_obj(**fields))) == Reason.BAD_USER_RECORD


def test_optional_user_fields() -> None:
    result = run(user=user_obj(username=..., principalId=None, groups=...))
    assert isinstance(result, Accepted)
    assert result.identity.groups == ()
    assert result.identity.username == ""


def test_objects_without_a_name_are_skipped() -> None:
    assert token_from_object({"userName": "u"}) is None
    assert token_from_object({"metadata": {"name": ""}}) is None
    assert user_from_object({"metadata": "x"}) is None


def test_token_record_repr_hides_the_hash() -> None:
    record = token_from_object(token_obj())
    assert record is not None and record.hash not in repr(record)

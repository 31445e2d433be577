"""TokenReview requests and answers (pure, no I/O).

kube-apiserver's webhook token authenticator POSTs a ``TokenReview``
(``authentication.k8s.io/v1`` or ``v1beta1``, chosen by its
``--authentication-token-webhook-version``) and reads ``status`` from the answer.
There are two error channels, and they must not be mixed:

* A well-formed review of a token we do not accept is answered **200** with
  ``status.authenticated: false`` and a short ``status.error`` (the API server logs
  it; the client only ever sees its own 401).
* A request that is not a TokenReview at all — not JSON, the wrong kind or
  apiVersion, no token, too big — is answered with a 4xx ``Status`` object, since
  there is no review to answer. kube-apiserver never sends such a thing.

The token is never part of an answer, an exception message or a ``repr``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

from ace.records import EXTRA_PRINCIPAL_ID, EXTRA_USERNAME
from config.identity import Identity

GROUP = "authentication.k8s.io"
KIND = "TokenReview"
API_VERSIONS = (f"{GROUP}/v1", f"{GROUP}/v1beta1")


class UserInfo(TypedDict, total=False):
    username: str
    uid: str
    groups: list[str]
    extra: dict[str, list[str]]


class TokenReviewSpec(TypedDict, total=False):
    token: str
    audiences: list[str]


class TokenReviewStatus(TypedDict, total=False):
    authenticated: bool
    user: UserInfo
    audiences: list[str]
    error: str


class TokenReview(TypedDict):
    apiVersion: str
    kind: str
    metadata: NotRequired[dict[str, Any]]
    spec: NotRequired[TokenReviewSpec]
    status: NotRequired[TokenReviewStatus]


class Status(TypedDict):
    """``meta.k8s.io`` ``Status``: the answer to a request that is not a review."""

    kind: str
    apiVersion: str
    metadata: dict[str, Any]
    status: str
    message: str
    reason: str
    code: int


class BadReview(Exception):
    """The request is not a TokenReview we can answer; ``answer()`` is the reply."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def answer(self) -> Status:
        return status_object(self.code, self.reason, self.message)


@dataclass(frozen=True, slots=True)
class ReviewRequest:
    api_version: str
    token: str = field(repr=False)
    audiences: tuple[str, ...] = ()


def status_object(code: int, reason: str, message: str) -> Status:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _bad(message: str) -> BadReview:
    return BadReview(400, "BadRequest", message)


def parse_request(body: bytes, max_body: int) -> ReviewRequest:
    """The token and apiVersion of a TokenReview body, or ``BadReview``."""
    if len(body) > max_body:
        raise BadReview(
            413, "RequestEntityTooLarge", f"the request body is larger than {max_body} bytes"
        )
    if not body.strip():
        raise _bad("the request body is empty; expected a TokenReview")
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise _bad("the request body is not valid JSON; expected a TokenReview") from None
    if not isinstance(data, dict):
        raise _bad("the request body is not a JSON object; expected a TokenReview")
    if data.get("kind") != KIND:
        raise _bad(f"kind must be {KIND}")
    api_version = data.get("apiVersion")
    if api_version not in API_VERSIONS:
        raise _bad(f"apiVersion must be one of {', '.join(API_VERSIONS)}")
    assert isinstance(api_version, str)
    spec = data.get("spec")
    if not isinstance(spec, dict):
        raise _bad("spec must be an object")
    token = spec.get("token")
    if not isinstance(token, str):
        raise _bad("spec.token must be a string")
    if not token:
        raise _bad("spec.token is empty")
    audiences = spec.get("audiences")
    if audiences is None:
        audiences = []
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise _bad("spec.audiences must be a list of strings")
    return ReviewRequest(api_version, token, tuple(audiences))


def user_info(identity: Identity) -> UserInfo:
    """The identity the gateway sends as impersonation, minus ``system:authenticated``
    (the API server adds that to every authenticated user itself)."""
    return {
        "username": identity.user_id,
        "uid": identity.user_id,
        "groups": list(dict.fromkeys(identity.groups)),
        "extra": {
            EXTRA_USERNAME: [identity.username],
            EXTRA_PRINCIPAL_ID: [identity.principal_id],
        },
    }


def authenticated(api_version: str, identity: Identity) -> TokenReview:
    # No status.audiences: the token is valid for the API server's own audiences.
    return {
        "apiVersion": api_version,
        "kind": KIND,
        "status": {"authenticated": True, "user": user_info(identity)},
    }


def rejected(api_version: str, error: str) -> TokenReview:
    return {
        "apiVersion": api_version,
        "kind": KIND,
        "status": {"authenticated": False, "error": error},
    }


def build_response(api_version: str, identity: Identity | None, error: str = "") -> TokenReview:
    """The answer to a well-formed review: the user, or ``authenticated: false`` and why."""
    if identity is not None:
        return authenticated(api_version, identity)
    return rejected(api_version, error or "token not accepted")

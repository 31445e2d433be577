"""The create-only review kinds: SelfSubjectReview, (Self)SubjectAccessReview,
SelfSubjectRulesReview, TokenReview, and serviceaccounts/token (TokenRequest)."""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from .auth import UserInfo
from .builtins import now_rfc3339
from .rbac import Authorizer, rules_review_status, subject_attributes
from .resources import ResourceType
from .status import bad_request, invalid


def self_subject_review(rt: ResourceType, user: UserInfo) -> dict[str, Any]:
    return {
        "kind": "SelfSubjectReview",
        "apiVersion": rt.api_version,
        "metadata": {"creationTimestamp": now_rfc3339()},
        "status": {"userInfo": user.to_json()},
    }


def access_review(
    rt: ResourceType,
    body: dict[str, Any],
    requester: UserInfo,
    url_namespace: str,
    authorizer: Authorizer,
) -> dict[str, Any]:
    """(Self|Local)SubjectAccessReview answered by the authorizer, as the real REST does:
    `allowed`, `denied` (never, RBAC has no deny), `reason`, `evaluationError`."""
    spec = body.get("spec") or {}
    if not (spec.get("resourceAttributes") or spec.get("nonResourceAttributes")):
        raise _invalid_review(
            rt,
            "spec.resourceAttributes",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )
    if rt.resource == "selfsubjectaccessreviews":
        user, groups = requester.username, requester.groups
    else:
        user, groups = str(spec.get("user", "") or ""), tuple(spec.get("groups") or ())
        if not user and not groups:
            raise invalid(
                rt.group,
                rt.kind,
                "",
                [
                    {
                        "type": "FieldValueInvalid",
                        "message": 'Invalid value: "": at least one of user or group must be '
                        "specified",
                        "field": "spec.user",
                    }
                ],
            )
    override = url_namespace if rt.resource == "localsubjectaccessreviews" else None
    decision = authorizer.authorize(subject_attributes(user, groups, spec, override))
    status: dict[str, Any] = {"allowed": decision.allowed}
    if decision.reason:
        status["reason"] = decision.reason
    if decision.error:
        status["evaluationError"] = decision.error
    return {
        "kind": rt.kind,
        "apiVersion": rt.api_version,
        "metadata": {**(body.get("metadata") or {}), "creationTimestamp": None},
        "spec": spec,
        "status": status,
    }


def _invalid_review(rt: ResourceType, field: str, detail: str) -> Exception:
    return invalid(
        rt.group,
        rt.kind,
        "",
        [{"type": "FieldValueRequired", "message": f"Required value: {detail}", "field": field}],
    )


def rules_review(
    rt: ResourceType, body: dict[str, Any], requester: UserInfo, authorizer: Authorizer
) -> dict[str, Any]:
    spec = body.get("spec") or {}
    namespace = str(spec.get("namespace", "") or "")
    rules, errors = authorizer.rules_for(requester.username, requester.groups, namespace)
    return {
        "kind": rt.kind,
        "apiVersion": rt.api_version,
        "metadata": {"creationTimestamp": None},
        "spec": spec,
        "status": rules_review_status(rules, errors),
    }


async def token_review(
    rt: ResourceType,
    body: dict[str, Any],
    authenticate: Callable[[str], Awaitable[UserInfo | None]],
) -> dict[str, Any]:
    spec = body.get("spec") or {}
    token = spec.get("token", "")
    if not token:
        raise bad_request("token is required")  # pragma: no cover - kubectl never sends this
    user = await authenticate(token)
    status: dict[str, Any] = {
        "authenticated": user is not None,
        "user": user.to_json() if user else {},
    }
    if spec.get("audiences"):
        status["audiences"] = spec["audiences"]
    return {
        "kind": rt.kind,
        "apiVersion": rt.api_version,
        "metadata": {"creationTimestamp": None},
        "spec": spec,
        "status": status,
    }


class ServiceAccountTokens:
    """Tokens minted through serviceaccounts/<name>/token; they authenticate as the account."""

    def __init__(self) -> None:
        self.tokens: dict[str, tuple[UserInfo, datetime.datetime]] = {}

    def issue(self, namespace: str, sa: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        spec = body.get("spec") or {}
        seconds = int(spec.get("expirationSeconds") or 3600)
        if seconds < 600:
            raise bad_request(
                "spec.expirationSeconds: Invalid value: "
                "may not specify a duration less than 10 minutes"
            )
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
        name = (sa.get("metadata") or {}).get("name", "")
        token = f"standin-sa.{namespace}.{name}.{secrets.token_urlsafe(24)}"
        user = UserInfo(
            f"system:serviceaccount:{namespace}:{name}",
            (sa.get("metadata") or {}).get("uid", ""),
            ("system:serviceaccounts", f"system:serviceaccounts:{namespace}"),
        )
        self.tokens[token] = (user, expires)
        return {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": now_rfc3339()},
            "spec": {
                "audiences": spec.get("audiences")
                or ["https://kubernetes.default.svc.cluster.local"],
                "expirationSeconds": seconds,
                "boundObjectRef": spec.get("boundObjectRef"),
            },
            "status": {
                "token": token,
                "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        }

    def lookup(self, token: str) -> UserInfo | None:
        found = self.tokens.get(token)
        if found is None:
            return None
        user, expires = found
        if expires < datetime.datetime.now(datetime.UTC):
            return None
        return user

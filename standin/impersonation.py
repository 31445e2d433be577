"""Impersonation, after apiserver's `filters.WithImpersonation` (v1.33).

Each requested user, group, service account, uid and extra value is authorized (verb
`impersonate`, as the real filter asks the authorizer: RBAC unless `--authorization-mode
AlwaysAllow`); the 403 is `responsewriters.Forbidden` for the first one refused.
`--impersonator-users` / `--impersonator-groups` remain as extra grants: their members may
impersonate anyone without RBAC rules (the real server has no such flags).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from multidict import CIMultiDictProxy

from .auth import ALL_AUTHENTICATED, ALL_UNAUTHENTICATED, ANONYMOUS, UserInfo
from .rbac import Attributes, Decision, forbidden_error
from .status import ApiError

USER_HEADER = "Impersonate-User"
GROUP_HEADER = "Impersonate-Group"
UID_HEADER = "Impersonate-Uid"
EXTRA_PREFIX = "impersonate-extra-"

_SA_PREFIX = "system:serviceaccount:"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class PlainInternalError(Exception):
    """`responsewriters.InternalError`: a text/plain 500, not a Status."""


@dataclass(frozen=True)
class _Request:
    """An `ObjectReference` as buildImpersonationRequests makes them."""

    kind: str
    name: str
    namespace: str = ""
    api_version: str = ""
    field_path: str = ""

    def go_repr(self) -> str:
        # Go's %v of v1.ObjectReference{Kind, Namespace, Name, UID, APIVersion, ResourceVersion,
        # FieldPath}.
        fields = (self.kind, self.namespace, self.name, "", self.api_version, "", self.field_path)
        return "{" + " ".join(fields) + "}"


def split_service_account(username: str) -> tuple[str, str] | None:
    if not username.startswith(_SA_PREFIX):
        return None
    parts = username[len(_SA_PREFIX) :].split(":")
    if len(parts) != 2:
        return None
    namespace, name = parts
    if len(namespace) > 63 or not _DNS_LABEL.match(namespace):
        return None
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        return None
    return namespace, name


def _unescape_extra_key(raw: str) -> str:
    """`url.PathUnescape`, falling back to the raw key when it is malformed."""
    if "%" not in raw:
        return raw
    if re.search(r"%(?![0-9a-fA-F]{2})", raw):
        return raw
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        return raw


def _build_requests(headers: CIMultiDictProxy[str]) -> list[_Request]:
    requests: list[_Request] = []
    user = headers.get(USER_HEADER, "")
    if user:
        sa = split_service_account(user)
        if sa is not None:
            requests.append(_Request("ServiceAccount", sa[1], namespace=sa[0]))
        else:
            requests.append(_Request("User", user))
    groups = headers.getall(GROUP_HEADER, [])
    requests.extend(_Request("Group", g) for g in groups)
    has_extra = False
    for name, value in headers.items():
        if not name.lower().startswith(EXTRA_PREFIX):
            continue
        has_extra = True
        raw_key = name[len(EXTRA_PREFIX) :].lower()
        key = _unescape_extra_key(raw_key)
        requests.append(
            _Request("UserExtra", value, api_version="authentication.k8s.io/v1", field_path=key)
        )
    uid = headers.get(UID_HEADER, "")
    if uid:
        requests.append(_Request("UID", uid, api_version="authentication.k8s.io/v1"))
    if (groups or has_extra or uid) and not user:
        raise PlainInternalError(
            f"requested [{' '.join(r.go_repr() for r in requests)}] without impersonating a user"
        )
    return requests


def has_impersonation_headers(headers: CIMultiDictProxy[str]) -> bool:
    return any(
        n.lower() in ("impersonate-user", "impersonate-group", "impersonate-uid")
        or n.lower().startswith(EXTRA_PREFIX)
        for n in headers
    )


class Impersonator:
    def __init__(
        self,
        users: Iterable[str] = (),
        groups: Iterable[str] = (),
        authorize: Callable[[Attributes], Decision] | None = None,
    ):
        self.users = frozenset(users)
        self.groups = frozenset(groups)
        self.authorize = authorize

    def may_impersonate(self, requestor: UserInfo) -> bool:
        """The flags' extra grant."""
        return requestor.username in self.users or bool(self.groups & set(requestor.groups))

    @staticmethod
    def attributes(requestor: UserInfo, req: _Request) -> Attributes:
        """actingAsAttributes of the real filter."""
        group, resource, sub, namespace = "", "", "", ""
        if req.kind == "ServiceAccount":
            resource, namespace = "serviceaccounts", req.namespace
        elif req.kind == "User":
            resource = "users"
        elif req.kind == "Group":
            resource = "groups"
        elif req.kind == "UserExtra":
            group, resource, sub = "authentication.k8s.io", "userextras", req.field_path
        else:
            group, resource = "authentication.k8s.io", "uids"
        return Attributes(
            requestor.username,
            requestor.groups,
            "impersonate",
            True,
            namespace,
            group,
            resource,
            sub,
            req.name,
        )

    def _deny(self, requestor: UserInfo, req: _Request, reason: str = "") -> ApiError:
        return forbidden_error(self.attributes(requestor, req), reason)

    def _check(self, requestor: UserInfo, req: _Request) -> None:
        decision = (
            self.authorize(self.attributes(requestor, req)) if self.authorize else Decision(False)
        )
        if not decision.allowed:
            raise self._deny(requestor, req, decision.reason)

    def impersonate(self, requestor: UserInfo, headers: CIMultiDictProxy[str]) -> UserInfo | None:
        """The impersonated user, or None when the request asks for no impersonation.

        Raises ApiError (403) or PlainInternalError (500).
        """
        requests = _build_requests(headers)
        if not requests:
            return None
        groups_specified = bool(headers.getall(GROUP_HEADER, []))
        username, uid = "", ""
        groups: list[str] = []
        extra: dict[str, list[str]] = {}
        granted = self.may_impersonate(requestor)
        for req in requests:
            if req.kind == "ServiceAccount":
                username = f"{_SA_PREFIX}{req.namespace}:{req.name}"
                if not groups_specified:
                    groups = ["system:serviceaccounts", f"system:serviceaccounts:{req.namespace}"]
            elif req.kind == "User":
                username = req.name
            elif req.kind == "Group":
                groups.append(req.name)
            elif req.kind == "UserExtra":
                extra.setdefault(req.field_path, []).append(req.name)
            else:
                uid = req.name
            if not granted:
                self._check(requestor, req)
        if username != ANONYMOUS:
            if not any(g in (ALL_AUTHENTICATED, ALL_UNAUTHENTICATED) for g in groups):
                groups.append(ALL_AUTHENTICATED)
        elif ALL_UNAUTHENTICATED not in groups:
            groups.append(ALL_UNAUTHENTICATED)
        return UserInfo(username, uid, tuple(groups), {k: tuple(v) for k, v in extra.items()})

"""``kubectl --as`` decided by the cluster's own RBAC: may the caller impersonate that?

A client's ``Impersonate-User/-Group/-Uid/-Extra-*`` headers are forwarded only when the
downstream cluster lets the caller impersonate each thing they name. The gateway asks
the cluster the questions kube-apiserver's impersonation filter asks
(``staging/src/k8s.io/apiserver/pkg/endpoints/filters/impersonation.go``,
``buildImpersonationRequests``): verb ``impersonate`` on ``users`` (or ``serviceaccounts``
in its namespace for ``system:serviceaccount:<ns>:<name>``), on each of ``groups``, on
``uids`` and on ``userextras/<key>`` (API group ``authentication.k8s.io``), the value as
the resource name. Each is one ``SelfSubjectAccessReview`` sent through the tunnel **as
the caller** (the caller's own identity lines, ``impersonation.identity_block``), all in
parallel; answers are cached for ``TTL_S`` per (cluster, caller, role, question) in a
bounded cache. The first denial, in the filter's order, refuses the request with the
API server's own 403 (``denial``, worded as ``responsewriters.ForbiddenStatusError``).
A cluster that cannot be asked (no tunnel, a timeout, an unexpected answer) is a
503/504, never an allow.

Pure: ``reviews_for`` (which questions a header set needs), ``review_body``,
``read_review`` and ``denial``. I/O: ``ImpersonationReviews.check`` over a
``gateway.clusters.upstream.StreamPool``. ``gateway.proxy.handler._serve`` calls it only
for requests that carry an ``Impersonate-*`` field (``Request.impersonates``): the hot
path does no work for it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from config.identity import Identity
from gateway.clusters.upstream import StreamPool, UpstreamError
from gateway.errors import Forbidden, GatewayError, UpstreamUnavailable
from gateway.proxy.heads import CheckedFields, UnsafeHead, request_head
from gateway.proxy.impersonation import IMPERSONATE_PREFIX
from tunnel.errors import TunnelError

Header = tuple[bytes, bytes]

AUTHENTICATION_GROUP = "authentication.k8s.io"
TTL_S = 5.0
"""How long an answer is reused: a revoked downstream grant takes effect after this."""
MAX_CACHED = 4096
"""Answers kept (the oldest go first)."""
MAX_REVIEWS = 64
"""Questions one request may need: more ``Impersonate-*`` fields is a 400."""
PARALLEL = 8
"""Reviews in flight at once for one request (each holds a tunnel stream)."""
TIMEOUT_S = 10.0
"""The whole check; longer is a 504."""
MAX_ANSWER_BYTES = 64 * 1024
REVIEW_PATH = b"/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"

_USER = b"impersonate-user"
_GROUP = b"impersonate-group"
_UID = b"impersonate-uid"
_EXTRA = b"impersonate-extra-"
_SA_PREFIX = "system:serviceaccount:"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_BAD_ESCAPE = re.compile(r"%(?![0-9a-fA-F]{2})")
_OWS = b" \t"


@dataclass(frozen=True, slots=True)
class Question:
    """One ``authorizer.Attributes`` the impersonation filter authorizes (verb
    ``impersonate``): ``resource`` in API group ``group``, named ``name``."""

    resource: str
    name: str
    group: str = ""
    subresource: str = ""
    namespace: str = ""

    def resource_attributes(self) -> dict[str, str]:
        attrs = {"verb": "impersonate", "group": self.group, "resource": self.resource}
        if self.subresource:
            attrs["subresource"] = self.subresource
        if self.namespace:
            attrs["namespace"] = self.namespace
        attrs["name"] = self.name
        return attrs


def split_service_account(username: str) -> tuple[str, str] | None:
    """``serviceaccount.SplitUsername``: (namespace, name) of
    ``system:serviceaccount:<ns>:<name>``, or None when it is not a valid one (then it
    is impersonated as a plain user, as kube-apiserver does)."""
    if not username.startswith(_SA_PREFIX):
        return None
    parts = username[len(_SA_PREFIX) :].split(":")
    if len(parts) != 2:
        return None
    namespace, name = parts
    if len(namespace) > 63 or _DNS_LABEL.fullmatch(namespace) is None:
        return None
    if len(name) > 253 or _DNS_SUBDOMAIN.fullmatch(name) is None:
        return None
    return namespace, name


def _extra_key(raw: str) -> str:
    """``unescapeExtraKey``: ``url.PathUnescape`` of the lowercased name's tail, the raw
    key when it is not a valid escape."""
    if "%" not in raw or _BAD_ESCAPE.search(raw):
        return raw
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        return raw


def _text(value: bytes) -> str:
    """A field value as the API server reads it (its parser trims the spaces at either
    end); the review's JSON carries text, so a value must be UTF-8."""
    try:
        return value.strip(_OWS).decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeHead("an Impersonate-* value that is not UTF-8") from None


def reviews_for(headers: Iterable[Header]) -> tuple[Question, ...]:
    """The questions the impersonation filter would ask for ``headers``, in its order:
    the user (every ``Impersonate-User`` line: a second one is refused later as
    ambiguous, but never unasked), each group, each extra value, the uid; without
    repeats. Empty without ``Impersonate-*`` fields. ``UnsafeHead`` (400) for a value
    that is not UTF-8 or more than ``MAX_REVIEWS`` questions."""
    users: list[Question] = []
    groups: list[Question] = []
    extras: list[Question] = []
    uids: list[Question] = []
    count = 0
    for key, value in headers:
        lower = key.lower()
        if not lower.startswith(IMPERSONATE_PREFIX):
            continue
        count += 1
        if count > MAX_REVIEWS:
            raise UnsafeHead(f"more than {MAX_REVIEWS} Impersonate-* header fields")
        text = _text(value)
        if lower == _USER:
            if not text:
                continue  # the filter asks nothing for an empty user; the shape check refuses it
            account = split_service_account(text)
            if account is not None:
                users.append(Question("serviceaccounts", account[1], namespace=account[0]))
            else:
                users.append(Question("users", text))
        elif lower == _GROUP:
            groups.append(Question("groups", text))
        elif lower == _UID:
            if text:
                uids.append(Question("uids", text, AUTHENTICATION_GROUP))
        elif lower.startswith(_EXTRA):
            name = _extra_key(lower[len(_EXTRA) :].decode("latin-1"))
            extras.append(Question("userextras", text, AUTHENTICATION_GROUP, name))
    return tuple(dict.fromkeys([*users, *groups, *extras, *uids]))


def review_body(question: Question) -> bytes:
    """The ``SelfSubjectAccessReview`` that asks ``question``."""
    return json.dumps(
        {
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "spec": {"resourceAttributes": question.resource_attributes()},
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = ""


class ReviewFailed(Exception):
    """The cluster gave no usable answer (the message says what it gave)."""


def read_review(status: int, body: bytes) -> Decision:
    """The decision in the API server's answer to a review, else ``ReviewFailed``."""
    if status not in {200, 201}:
        message = ""
        try:
            parsed = json.loads(body)
            if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
                message = f": {parsed['message'][:200]}"
        except ValueError:
            pass
        raise ReviewFailed(f"the review was answered {status}{message}")
    try:
        parsed = json.loads(body)
    except ValueError:
        raise ReviewFailed("the review's answer is not JSON") from None
    result = parsed.get("status") if isinstance(parsed, dict) else None
    if not isinstance(result, dict):
        raise ReviewFailed("the review's answer has no status")
    allowed = result.get("allowed")
    if not isinstance(allowed, bool):
        raise ReviewFailed("the review's answer has no status.allowed")
    reason = result.get("reason")
    reason = reason if isinstance(reason, str) else ""
    error = result.get("evaluationError")
    if not allowed and not reason and isinstance(error, str):
        reason = error
    return Decision(allowed and result.get("denied") is not True, reason)


def go_quote(value: str) -> str:
    """Go's ``%q`` for the text in API messages (as ``standin.status.go_quote``)."""
    return json.dumps(value, ensure_ascii=False)


_SANITIZE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def denial(user: str, question: Question, reason: str = "") -> GatewayError:
    """The 403 kube-apiserver's impersonation filter answers when ``user`` may not
    impersonate ``question``: ``responsewriters.ForbiddenStatusError`` (the message
    sanitized, the authorizer's reason after it) in ``apierrors.NewForbidden``."""
    shown = (
        f"{question.resource}/{question.subresource}" if question.subresource else question.resource
    )
    scope = (
        f"in the namespace {go_quote(question.namespace)}"
        if question.namespace
        else "at the cluster scope"
    )
    why = (
        f"User {go_quote(user)} cannot impersonate resource {go_quote(shown)} "
        f"in API group {go_quote(question.group)} {scope}"
    ).translate(_SANITIZE)
    if reason:
        why = f"{why}: {reason}"
    qualified = f"{question.resource}.{question.group}" if question.group else question.resource
    details: dict[str, Any] = {"name": question.name}
    if question.group:
        details["group"] = question.group
    details["kind"] = question.resource
    error = Forbidden(f"{qualified} {go_quote(question.name)} is forbidden: {why}")
    error.details = details
    return error


CacheKey = tuple[str, Identity, str | None, Question]
"""(cluster id, caller, the caller's role there, question)."""


class ImpersonationReviews:
    """The answers of recent reviews (bounded, ``TTL_S`` each) and the reviews in flight
    (a question asked once however many requests wait for it)."""

    def __init__(
        self,
        ttl_s: float = TTL_S,
        max_cached: int = MAX_CACHED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_cached = max_cached
        self._clock = clock
        self._answers: OrderedDict[CacheKey, tuple[float, Decision]] = OrderedDict()
        self._asking: dict[CacheKey, asyncio.Future[Decision]] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def cached(self, key: CacheKey) -> Decision | None:
        found = self._answers.get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            del self._answers[key]
            return None
        return found[1]

    def remember(self, key: CacheKey, decision: Decision) -> None:
        answers = self._answers
        answers[key] = (self._clock() + self.ttl_s, decision)
        answers.move_to_end(key)
        while len(answers) > self.max_cached:
            answers.popitem(last=False)

    def forget(self, cluster_id: str | None = None) -> None:
        """Drop the answers (of one cluster)."""
        if cluster_id is None:
            self._answers.clear()
            return
        for key in [k for k in self._answers if k[0] == cluster_id]:
            del self._answers[key]

    async def _decide(self, key: CacheKey, ask: Callable[[], Awaitable[Decision]]) -> Decision:
        found = self.cached(key)
        if found is not None:
            return found
        pending = self._asking.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._asking[key] = future
        try:
            decision = await ask()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning
            raise
        finally:
            del self._asking[key]
        self.remember(key, decision)
        future.set_result(decision)
        return decision

    async def check(
        self,
        cluster_id: str,
        identity: Identity,
        role: str | None,
        questions: tuple[Question, ...],
        ask: Callable[[Question], Awaitable[Decision]],
    ) -> GatewayError | None:
        """The first denial of ``questions`` (in their order) as the API server words
        it, or None when every one is allowed. ``ask`` puts one question to the cluster
        (``ask_cluster``); errors talking to it are a 503 (504 for a timeout)."""
        limit = asyncio.Semaphore(PARALLEL)

        async def one(question: Question) -> Decision:
            key: CacheKey = (cluster_id, identity, role, question)
            found = self.cached(key)
            if found is not None:
                return found
            async with limit:
                return await self._decide(key, lambda: ask(question))

        try:
            async with asyncio.timeout(TIMEOUT_S):
                decisions = await asyncio.gather(*(one(q) for q in questions))
        except TimeoutError:
            raise UpstreamUnavailable(
                f"cluster {cluster_id}: the impersonation could not be reviewed: "
                "the API server did not answer in time",
                status=504,
            ) from None
        except ReviewFailed as exc:
            raise UpstreamUnavailable(
                f"cluster {cluster_id}: the impersonation could not be reviewed: {exc}"
            ) from None
        except (UpstreamError, TunnelError) as exc:
            timed_out = "in time" in str(exc)
            raise UpstreamUnavailable(
                f"cluster {cluster_id}: the impersonation could not be reviewed: {exc}",
                status=504 if timed_out else 503,
            ) from None
        for question, decision in zip(questions, decisions, strict=True):
            if not decision.allowed:
                return denial(identity.user_id, question, decision.reason)
        return None


async def ask_cluster(
    pool: StreamPool,
    agent: CheckedFields,
    caller: CheckedFields,
    question: Question,
    request_id: str = "",
) -> Decision:
    """One ``SelfSubjectAccessReview`` through the tunnel: the agent's ``Host`` and
    credential (``agent``), the caller's identity lines (``caller``), so the API server
    reviews the caller. The request id is its audit id, as for the request it is for.
    """
    body = review_body(question)
    fields: list[Header] = [
        (b"Content-Type", b"application/json"),
        (b"Accept", b"application/json"),
        (b"User-Agent", b"herdgate-gateway/impersonation-review"),
    ]
    if request_id:
        rid = request_id.encode("ascii")
        fields += [(b"X-Request-Id", rid), (b"Audit-ID", rid)]
    fields.append((b"Content-Length", b"%d" % len(body)))
    head = request_head(b"POST", REVIEW_PATH, fields, agent, caller)
    response = await pool.request("POST", head, body)
    try:
        if response.content_length is not None and response.content_length > MAX_ANSWER_BYTES:
            raise ReviewFailed("the review's answer is too large")
        parts: list[bytes] = []
        size = 0
        while chunk := await response.read_chunk():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise ReviewFailed("the review's answer is too large")
            parts.append(bytes(chunk))
        response.release()
    finally:
        if not response.complete:
            response.stream.reset()
    return read_review(response.status, b"".join(parts))


IMPERSONATION_REVIEWS = web.AppKey("impersonation_reviews", ImpersonationReviews)

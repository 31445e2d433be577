"""``kubectl --as`` reviews, the pure parts: which questions a header set needs (checked
against the stand-in's port of kube-apiserver's impersonation filter), the review's body
and answer, the denial as the API server words it, and the cache (no I/O)."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from config.identity import Identity
from gateway.errors import GatewayError
from gateway.proxy.heads import UnsafeHead
from gateway.proxy.impersonation_review import (
    AUTHENTICATION_GROUP,
    MAX_REVIEWS,
    Decision,
    ImpersonationReviews,
    Question,
    ReviewFailed,
    denial,
    read_review,
    review_body,
    reviews_for,
)
from standin.auth import UserInfo
from standin.impersonation import Impersonator, _build_requests, _Request
from standin.status import ApiError

ALICE = Identity("u-alice", "alice", "local://u-alice")


def test_questions_follow_the_filters_order() -> None:
    headers = [
        (b"Accept", b"application/json"),
        (b"Impersonate-Uid", b"1234"),
        (b"Impersonate-Extra-Scopes", b"view"),
        (b"Impersonate-Group", b"devs"),
        (b"Impersonate-User", b"jane"),
        (b"Impersonate-Group", b"system:masters"),
    ]
    assert reviews_for(headers) == (
        Question("users", "jane"),
        Question("groups", "devs"),
        Question("groups", "system:masters"),
        Question("userextras", "view", AUTHENTICATION_GROUP, "scopes"),
        Question("uids", "1234", AUTHENTICATION_GROUP),
    )


def test_no_impersonation_needs_no_question() -> None:
    assert reviews_for([(b"Accept", b"*/*"), (b"X-Impersonate-User", b"x")]) == ()


def test_a_service_account_is_asked_in_its_namespace() -> None:
    [question] = reviews_for([(b"impersonate-user", b"system:serviceaccount:kube-system:default")])
    assert question == Question("serviceaccounts", "default", namespace="kube-system")
    assert question.resource_attributes() == {
        "verb": "impersonate",
        "group": "",
        "resource": "serviceaccounts",
        "namespace": "kube-system",
        "name": "default",
    }


@pytest.mark.parametrize(
    "user",
    ["system:serviceaccount:Kube:x", "system:serviceaccount:a:b:c", "system:serviceaccount:a"],
)
def test_a_malformed_service_account_name_is_a_user(user: str) -> None:
    assert reviews_for([(b"Impersonate-User", user.encode())]) == (Question("users", user),)


def test_extra_keys_are_lowercased_and_unescaped() -> None:
    questions = reviews_for(
        [
            (b"Impersonate-User", b"jane"),
            (b"Impersonate-Extra-Example.com%2FScopes", b"a"),
            (b"Impersonate-Extra-bad%zz", b"b"),
        ]
    )
    assert [q.subresource for q in questions[1:]] == ["example.com/scopes", "bad%zz"]


def test_values_are_read_as_the_api_server_reads_them() -> None:
    """Trimmed (its parser trims), each line one value (not split on commas)."""
    questions = reviews_for([(b"Impersonate-User", b" jane\t"), (b"Impersonate-Group", b"a, b")])
    assert questions == (Question("users", "jane"), Question("groups", "a, b"))


def test_repeats_are_asked_once_and_empty_user_or_uid_not_at_all() -> None:
    headers = [
        (b"Impersonate-Group", b"devs"),
        (b"impersonate-group", b"devs"),
        (b"Impersonate-User", b""),
        (b"Impersonate-Uid", b" "),
    ]
    assert reviews_for(headers) == (Question("groups", "devs"),)


def test_a_value_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(UnsafeHead):
        reviews_for([(b"Impersonate-User", b"\xff")])


def test_too_many_fields_are_refused() -> None:
    headers = [(b"Impersonate-User", b"jane")]
    headers += [(b"Impersonate-Group", b"g%d" % i) for i in range(MAX_REVIEWS)]
    with pytest.raises(UnsafeHead):
        reviews_for(headers)
    assert len(reviews_for(headers[:MAX_REVIEWS])) == MAX_REVIEWS


# Against the stand-in's port of impersonation.go (buildImpersonationRequests).

_VALUE = st.text(st.sampled_from("abcXYZ019:-_./@%é "), min_size=1, max_size=12).filter(
    lambda v: v == v.strip()
)
_KEY = st.text(st.sampled_from("abcXY19-.%2F"), min_size=1, max_size=10)
_OTHER = st.one_of(
    st.tuples(st.sampled_from(["Impersonate-Group", "impersonate-GROUP"]), _VALUE),
    st.tuples(_KEY.map(lambda k: f"Impersonate-Extra-{k}"), _VALUE),
    st.tuples(st.sampled_from(["Accept", "X-Impersonate-User"]), _VALUE),
)
_USER = st.one_of(
    _VALUE,
    st.tuples(st.sampled_from(["ns", "kube-system", "Bad"]), st.sampled_from(["sa", "a.b"])).map(
        lambda p: f"system:serviceaccount:{p[0]}:{p[1]}"
    ),
)


def _as_question(req: _Request) -> Question:
    if req.kind == "ServiceAccount":
        return Question("serviceaccounts", req.name, namespace=req.namespace)
    if req.kind == "User":
        return Question("users", req.name)
    if req.kind == "Group":
        return Question("groups", req.name)
    if req.kind == "UserExtra":
        return Question("userextras", req.name, AUTHENTICATION_GROUP, req.field_path)
    return Question("uids", req.name, AUTHENTICATION_GROUP)


@given(
    user=_USER,
    others=st.lists(_OTHER, max_size=8),
    uid=st.one_of(st.none(), _VALUE),
    at=st.integers(0, 8),
)
def test_the_questions_are_the_filters(
    user: str, others: list[tuple[str, str]], uid: str | None, at: int
) -> None:
    fields = [*others]
    fields.insert(min(at, len(fields)), ("Impersonate-User", user))
    if uid is not None:
        fields.append(("Impersonate-Uid", uid))
    reference = _build_requests(CIMultiDictProxy(CIMultiDict(fields)))
    expected = tuple(dict.fromkeys(_as_question(r) for r in reference))
    assert reviews_for([(k.encode(), v.encode()) for k, v in fields]) == expected


@given(st.lists(st.tuples(st.binary(max_size=30), st.binary(max_size=30)), max_size=10))
def test_any_header_set_gets_questions_or_a_clear_refusal(
    headers: list[tuple[bytes, bytes]],
) -> None:
    try:
        questions = reviews_for(headers)
    except UnsafeHead:
        return
    impersonating = [k for k, _ in headers if k.lower().startswith(b"impersonate-")]
    assert len(questions) <= len(impersonating)
    for question in questions:
        body = json.loads(review_body(question))
        assert body["spec"]["resourceAttributes"]["verb"] == "impersonate"


# The denial, worded as the API server words it.


def test_the_denial_of_a_user_is_the_api_servers() -> None:
    error = denial("u-57rxh", Question("users", "x"))
    assert error.status == 403 and error.reason == "Forbidden"
    assert error.message == (
        'users "x" is forbidden: User "u-57rxh" cannot impersonate resource "users" '
        'in API group "" at the cluster scope'
    )
    assert error.details == {"name": "x", "kind": "users"}


def test_the_denial_names_the_authorizers_reason_after_the_message() -> None:
    error = denial("u-1", Question("uids", "<1>", AUTHENTICATION_GROUP), "RBAC: no")
    assert error.message == (
        'uids.authentication.k8s.io "<1>" is forbidden: User "u-1" cannot impersonate '
        'resource "uids" in API group "authentication.k8s.io" at the cluster scope: RBAC: no'
    )


_KINDS = st.sampled_from(["User", "ServiceAccount", "Group", "UserExtra", "UID"])


@given(
    kind=_KINDS,
    name=_VALUE,
    key=_KEY,
    user=st.text(max_size=10),
    reason=st.sampled_from(["", "RBAC: <no rule>"]),
)
def test_every_denial_is_worded_as_the_stand_ins(
    kind: str, name: str, key: str, user: str, reason: str
) -> None:
    """The stand-in words the filter's 403 after kube-apiserver; the gateway must too."""
    req = _Request(
        kind,
        name,
        namespace="ns" if kind == "ServiceAccount" else "",
        field_path=key if kind == "UserExtra" else "",
    )
    requestor = UserInfo(user, "", ())
    expected = Impersonator(users=(), groups=())._deny(requestor, req, reason)
    assert isinstance(expected, ApiError)
    got = denial(user, _as_question(req), reason)
    assert (got.status, got.message) == (expected.code, expected.message)


# The review's answer.


def test_an_allowed_review() -> None:
    body = json.dumps({"kind": "SelfSubjectAccessReview", "status": {"allowed": True}})
    assert read_review(201, body.encode()) == Decision(True)


def test_a_denied_review_keeps_its_reason() -> None:
    body = {"status": {"allowed": False, "denied": True, "reason": "no"}}
    assert read_review(201, json.dumps(body).encode()) == Decision(False, "no")
    body = {"status": {"allowed": True, "denied": True}}
    assert read_review(201, json.dumps(body).encode()).allowed is False


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (403, b'{"kind":"Status","message":"nope"}'),
        (500, b"plain"),
        (201, b"not json"),
        (201, b"[]"),
        (201, b'{"status":{}}'),
        (201, b'{"status":{"allowed":"yes"}}'),
    ],
)
def test_an_answer_without_a_decision_is_a_failure_not_an_allow(status: int, body: bytes) -> None:
    with pytest.raises(ReviewFailed):
        read_review(status, body)


# The cache (a fake clock; the questions answered by a function, not a cluster).


class Asked:
    def __init__(self, denied: set[Question] | None = None) -> None:
        self.denied = denied or set()
        self.asked: list[Question] = []

    async def __call__(self, question: Question) -> Decision:
        self.asked.append(question)
        await asyncio.sleep(0)
        return Decision(question not in self.denied)


USER_Q = Question("users", "jane")
MASTERS = Question("groups", "system:masters")


async def test_the_first_denial_in_order_refuses() -> None:
    reviews = ImpersonationReviews()
    ask = Asked({MASTERS, Question("groups", "z")})
    refused = await reviews.check(
        "c-1", ALICE, "cluster-owner", (USER_Q, MASTERS, Question("groups", "z")), ask
    )
    assert isinstance(refused, GatewayError)
    assert refused.message.startswith('groups "system:masters" is forbidden: User "u-alice"')
    assert await reviews.check("c-1", ALICE, "cluster-owner", (USER_Q,), ask) is None


async def test_answers_are_reused_until_their_ttl() -> None:
    now = [100.0]
    reviews = ImpersonationReviews(ttl_s=5.0, clock=lambda: now[0])
    ask = Asked()
    for _ in range(3):
        assert await reviews.check("c-1", ALICE, "cluster-owner", (USER_Q,), ask) is None
    assert ask.asked == [USER_Q]
    ask.denied.add(USER_Q)  # revoked downstream
    now[0] += 4.9
    assert await reviews.check("c-1", ALICE, "cluster-owner", (USER_Q,), ask) is None
    now[0] += 0.2
    assert await reviews.check("c-1", ALICE, "cluster-owner", (USER_Q,), ask) is not None
    assert ask.asked == [USER_Q, USER_Q]


async def test_answers_are_per_cluster_caller_and_role() -> None:
    reviews = ImpersonationReviews()
    ask = Asked()
    bob = Identity("u-bob", "bob", "local://u-bob")
    for cluster, who, role in [
        ("c-1", ALICE, "cluster-owner"),
        ("c-2", ALICE, "cluster-owner"),
        ("c-1", bob, "cluster-owner"),
        ("c-1", ALICE, "cluster-member"),
    ]:
        await reviews.check(cluster, who, role, (USER_Q,), ask)
    assert len(ask.asked) == 4
    reviews.forget("c-1")
    assert len(reviews) == 1


async def test_the_cache_is_bounded() -> None:
    reviews = ImpersonationReviews(max_cached=3)
    ask = Asked()
    questions = tuple(Question("groups", f"g{i}") for i in range(10))
    await reviews.check("c-1", ALICE, "cluster-owner", questions, ask)
    assert len(reviews) == 3


async def test_one_question_in_flight_is_asked_once() -> None:
    reviews = ImpersonationReviews()
    gate = asyncio.Event()
    asked: list[Question] = []

    async def slow(question: Question) -> Decision:
        asked.append(question)
        await gate.wait()
        return Decision(True)

    waiting = [
        asyncio.ensure_future(reviews.check("c-1", ALICE, "cluster-owner", (USER_Q,), slow))
        for _ in range(5)
    ]
    await asyncio.sleep(0.01)
    gate.set()
    assert await asyncio.gather(*waiting) == [None] * 5
    assert asked == [USER_Q]


async def test_a_failed_review_is_a_503_and_not_remembered() -> None:
    reviews = ImpersonationReviews()

    async def failing(question: Question) -> Decision:
        raise ReviewFailed("the review was answered 500")

    with pytest.raises(GatewayError) as info:
        await reviews.check("c-1", ALICE, "cluster-owner", (USER_Q,), failing)
    assert info.value.status == 503
    assert "could not be reviewed" in info.value.message
    assert len(reviews) == 0


async def test_a_review_that_never_ends_is_a_504(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.proxy.impersonation_review.TIMEOUT_S", 0.01)
    reviews = ImpersonationReviews()

    async def hanging(question: Question) -> Decision:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    with pytest.raises(GatewayError) as info:
        await reviews.check("c-1", ALICE, "cluster-owner", (USER_Q,), hanging)
    assert info.value.status == 504

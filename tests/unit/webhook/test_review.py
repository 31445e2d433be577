"""TokenReview parsing and answers, v1 and v1beta1."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.identity import Identity
from webhook import review

V1 = "authentication.k8s.io/v1"
V1BETA1 = "authentication.k8s.io/v1beta1"
TOKEN = "token-b7xk2:s3cr3tvalue"
LIMIT = 1024 * 1024


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def apiserver_review(version: str, token: str = TOKEN, audiences: bool = True) -> bytes:
    """Exactly what kube-apiserver's webhook authenticator sends."""
    spec: dict[str, object] = {"token": token}
    if audiences:
        spec["audiences"] = ["https://kubernetes.default.svc.cluster.local"]
    return body(
        {
            "kind": "TokenReview",
            "apiVersion": version,
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": {"user": {}},
        }
    )


@pytest.mark.parametrize("version", [V1, V1BETA1])
def test_parses_what_the_apiserver_sends(version: str) -> None:
    parsed = review.parse_request(apiserver_review(version), LIMIT)
    assert parsed.api_version == version
    assert parsed.token == TOKEN
    assert parsed.audiences == ("https://kubernetes.default.svc.cluster.local",)
    assert review.parse_request(apiserver_review(version, audiences=False), LIMIT).audiences == ()


def test_repr_never_shows_the_token() -> None:
    parsed = review.parse_request(apiserver_review(V1), LIMIT)
    assert "s3cr3t" not in repr(parsed) and "token-b7xk2" not in repr(parsed)


IDENTITY = Identity(
    user_id="u-abcde",
    username="alice",
    principal_id="local://u-abcde",
    groups=("local://g-devs", "herdgate:cluster-member", "local://g-devs"),
    token_id="token-b7xk2",
)


@pytest.mark.parametrize("version", [V1, V1BETA1])
def test_authenticated_answer_in_the_same_version(version: str) -> None:
    answer = review.build_response(version, IDENTITY)
    assert answer == {
        "apiVersion": version,
        "kind": "TokenReview",
        "status": {
            "authenticated": True,
            "user": {
                "username": "u-abcde",
                "uid": "u-abcde",
                "groups": ["local://g-devs", "herdgate:cluster-member"],
                "extra": {"username": ["alice"], "principalid": ["local://u-abcde"]},
            },
        },
    }
    assert "system:authenticated" not in json.dumps(answer)


@pytest.mark.parametrize("version", [V1, V1BETA1])
def test_rejected_answer(version: str) -> None:
    answer = review.build_response(version, None, "token has expired")
    assert answer == {
        "apiVersion": version,
        "kind": "TokenReview",
        "status": {"authenticated": False, "error": "token has expired"},
    }


MALFORMED = {
    "empty": b"",
    "whitespace": b"  \n",
    "not json": b"{nope",
    "truncated": apiserver_review(V1)[:-3],
    "not utf-8": b'{"kind": "\xff\xfe"}',
    "json array": b"[]",
    "json string": b'"TokenReview"',
    "json null": b"null",
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "no kind": body({"apiVersion": V1, "spec": {"token": TOKEN}}),
    "wrong kind": body({"kind": "SubjectAccessReview", "apiVersion": V1, "spec": {"token": TOKEN}}),
    "kind not a string": body({"kind": ["TokenReview"], "apiVersion": V1, "spec": {"token": "t"}}),
    "no apiVersion": body({"kind": "TokenReview", "spec": {"token": TOKEN}}),
    "wrong group": body({"kind": "TokenReview", "apiVersion": "v1", "spec": {"token": TOKEN}}),
    "unknown version": body(
        {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v2", "spec": {"token": TOKEN}}
    ),
    "apiVersion an object": body({"kind": "TokenReview", "apiVersion": {}, "spec": {"token": "t"}}),
    "no spec": body({"kind": "TokenReview", "apiVersion": V1}),
    "spec a list": body({"kind": "TokenReview", "apiVersion": V1, "spec": [TOKEN]}),
    "no token": body({"kind": "TokenReview", "apiVersion": V1, "spec": {}}),
    "empty token": body({"kind": "TokenReview", "apiVersion": V1, "spec": {"token": ""}}),
    "token a number": body({"kind": "TokenReview", "apiVersion": V1, "spec": {"token": 7}}),
    "token null": body({"kind": "TokenReview", "apiVersion": V1, "spec": {"token": None}}),
    "audiences a string": body(
        {"kind": "TokenReview", "apiVersion": V1, "spec": {"token": TOKEN, "audiences": "x"}}
    ),
    "audiences of numbers": body(
        {"kind": "TokenReview", "apiVersion": V1, "spec": {"token": TOKEN, "audiences": [1]}}
    ),
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_are_400_status(raw: bytes) -> None:
    with pytest.raises(review.BadReview) as caught:
        review.parse_request(raw, LIMIT)
    status = caught.value.answer()
    assert status["code"] == 400 and status["reason"] == "BadRequest"
    assert status["kind"] == "Status" and status["status"] == "Failure"
    assert TOKEN not in json.dumps(status)


def test_too_large_is_413() -> None:
    raw = apiserver_review(V1, token="token-a:" + "x" * LIMIT)
    with pytest.raises(review.BadReview) as caught:
        review.parse_request(raw, LIMIT)
    assert caught.value.code == 413
    assert caught.value.answer()["reason"] == "RequestEntityTooLarge"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
REVIEWISH = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.sampled_from(["TokenReview", "Status", ""]) | JSON,
        "apiVersion": st.sampled_from([V1, V1BETA1, "v1", ""]) | JSON,
        "metadata": JSON,
        "spec": st.fixed_dictionaries(
            {}, optional={"token": st.text(max_size=40) | JSON, "audiences": JSON}
        )
        | JSON,
        "status": JSON,
    },
)


def check_outcome(raw: bytes) -> None:
    try:
        parsed = review.parse_request(raw, 4096)
    except review.BadReview as exc:
        status = exc.answer()
        assert status["code"] in (400, 413)
        json.dumps(status)
        return
    assert parsed.api_version in review.API_VERSIONS
    assert isinstance(parsed.token, str) and parsed.token
    json.dumps(review.build_response(parsed.api_version, None, "x"))


@given(st.binary(max_size=300))
def test_fuzz_bytes(raw: bytes) -> None:
    check_outcome(raw)


@given(JSON)
def test_fuzz_json(value: object) -> None:
    check_outcome(json.dumps(value).encode())


@given(REVIEWISH)
def test_fuzz_review_shapes(value: object) -> None:
    check_outcome(json.dumps(value).encode())

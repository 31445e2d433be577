"""The HTTP layer: every answer is JSON, the two error channels stay apart, nothing crashes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from ace.records import TokenRecord, UserRecord, token_from_object, user_from_object
from gateway.identity import hashing
from tests.fakes.loop_clock import virtual_time
from webhook.app import answer, build_app

SECRET = hashing.new_secret()
V1 = "authentication.k8s.io/v1"
V1BETA1 = "authentication.k8s.io/v1beta1"
NOW = 1_800_000_000.0
LIMIT = 64 * 1024


@dataclass
class Source:
    tokens: dict[str, TokenRecord] = field(default_factory=dict)
    users: dict[str, UserRecord] = field(default_factory=dict)
    synced: bool = True


def make_source() -> Source:
    t = token_from_object(
        {
            "metadata": {"name": "token-b7xk2"},
            "userName": "u-abcde",
            "hash": hashing.hash_token(SECRET),
            "enabled": True,
        }
    )
    u = user_from_object(
        {
            "metadata": {"name": "u-abcde"},
            "username": "alice",
            "principalId": "local://u-abcde",
            "groups": ["herdgate:cluster-member"],
            "enabled": True,
        }
    )
    assert t is not None and u is not None
    return Source({t.name: t}, {u.name: u})


def review_body(token: str, version: str = V1) -> bytes:
    return json.dumps(
        {"kind": "TokenReview", "apiVersion": version, "spec": {"token": token}}
    ).encode()


SOURCE = make_source()


@pytest.mark.parametrize("version", [V1, V1BETA1])
def test_answer_valid_and_invalid(version: str) -> None:
    ok = answer(review_body(f"token-b7xk2:{SECRET}", version), SOURCE.tokens, SOURCE.users, NOW)
    assert ok.status == 200
    assert ok.body["apiVersion"] == version
    assert ok.body["status"]["authenticated"] is True
    assert ok.body["status"]["user"]["username"] == "u-abcde"
    bad = answer(review_body("token-b7xk2:nope", version), SOURCE.tokens, SOURCE.users, NOW)
    assert bad.status == 200
    assert bad.body == {
        "apiVersion": version,
        "kind": "TokenReview",
        "status": {"authenticated": False, "error": "invalid token secret"},
    }


def assert_well_formed(status: int, body: Any, secret: str = SECRET) -> None:
    text = json.dumps(body)
    assert secret not in text
    if status == 200:
        assert body["kind"] == "TokenReview"
        assert body["apiVersion"] in (V1, V1BETA1)
        assert isinstance(body["status"]["authenticated"], bool)
        if not body["status"]["authenticated"]:
            assert body["status"]["error"]
    else:
        assert status in (400, 413)
        assert body["kind"] == "Status" and body["code"] == status and body["message"]


TOKENS = st.sampled_from(["", ":", f"token-b7xk2:{SECRET}", "token-b7xk2:x"]) | st.text(max_size=30)
BODIES = (
    st.binary(max_size=200)
    | st.builds(review_body, TOKENS, st.sampled_from([V1, V1BETA1, "v1", ""]))
    | st.builds(
        lambda spec: json.dumps({"kind": "TokenReview", "apiVersion": V1, "spec": spec}).encode(),
        st.dictionaries(
            st.sampled_from(["token", "audiences", "x"]), st.none() | st.text() | st.integers()
        ),
    )
)


@given(BODIES)
@settings(max_examples=300)
def test_fuzz_answers_are_well_formed(body: bytes) -> None:
    result = answer(body, SOURCE.tokens, SOURCE.users, NOW, max_body=150)
    assert_well_formed(result.status, result.body)


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Source]]:
    source = make_source()
    app = build_app(source, max_body=LIMIT, clock=lambda: NOW)
    async with TestClient(TestServer(app)) as c:
        yield c, source


async def test_http_review_and_health(client: Any) -> None:
    c, source = client
    resp = await c.post("/v1/authenticate", data=review_body(f"token-b7xk2:{SECRET}"))
    assert resp.status == 200 and resp.content_type == "application/json"
    assert (await resp.json())["status"]["user"]["uid"] == "u-abcde"
    resp = await c.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok", "tokens": 1, "users": 1}
    source.synced = False
    assert (await c.get("/healthz")).status == 503
    resp = await c.post("/v1/authenticate", data=review_body(f"token-b7xk2:{SECRET}"))
    assert resp.status == 503
    assert (await resp.json())["reason"] == "ServiceUnavailable"
    assert (await c.get("/livez")).status == 200


async def test_http_errors_are_status_json(client: Any) -> None:
    c, _ = client
    for method, path, status in [
        ("GET", "/v1/authenticate", 405),
        ("POST", "/v1/other", 404),
        ("POST", "/", 404),
    ]:
        resp = await c.request(method, path, data=b"{}")
        assert resp.status == status
        body = await resp.json()
        assert body["kind"] == "Status" and body["code"] == status
    resp = await c.post("/v1/authenticate", data=b"nope")
    assert resp.status == 400 and (await resp.json())["reason"] == "BadRequest"


async def test_http_too_large_with_and_without_length(client: Any) -> None:
    c, _ = client
    big = review_body("token-b7xk2:" + "x" * LIMIT)
    resp = await c.post("/v1/authenticate", data=big)
    assert resp.status == 413
    assert (await resp.json())["reason"] == "RequestEntityTooLarge"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(LIMIT // 4096 + 2):
            yield b"x" * 4096

    resp = await c.post("/v1/authenticate", data=chunks())
    assert resp.status == 413
    # and the server still answers
    resp = await c.post("/v1/authenticate", data=review_body(f"token-b7xk2:{SECRET}"))
    assert resp.status == 200


async def test_a_bug_is_a_500_status(client: Any) -> None:
    c, source = client
    source.tokens = None  # type: ignore[assignment]  # make the lookup blow up
    resp = await c.post("/v1/authenticate", data=review_body(f"token-b7xk2:{SECRET}"))
    assert resp.status == 500
    body = await resp.json()
    assert body["kind"] == "Status" and SECRET not in json.dumps(body)
    assert (await c.get("/livez")).status == 200


async def test_http_body_that_trickles_in_is_cut_off(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from webhook import app as app_module

    monkeypatch.setattr(app_module, "BODY_TIMEOUT_S", 0.2)
    c, _ = client

    async def slow() -> AsyncIterator[bytes]:
        yield b'{"kind":'
        await asyncio.sleep(1)
        yield b'"TokenReview"}'

    with virtual_time():  # the client's pause and the body timeout, without waiting
        resp = await c.post("/v1/authenticate", data=slow())
        assert resp.status == 408
        assert (await resp.json())["reason"] == "Timeout"

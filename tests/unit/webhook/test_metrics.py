"""``GET /metrics``: decisions by result, review latency, cache sizes and state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.webhook.test_app import NOW, SECRET, Source, make_source, review_body
from webhook.app import build_app
from webhook.metrics import WebhookMetrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def decisions(found: Samples, result: str) -> float:
    return found[("herdgate_webhook_decisions_total", (("result", result),))]


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Source]]:
    source = make_source()
    async with TestClient(TestServer(build_app(source, clock=lambda: NOW))) as c:
        yield c, source


async def scrape(c: TestClient[web.Request, web.Application]) -> Samples:
    resp = await c.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return samples(await resp.text())


async def test_nothing_counted_yet(client: Any) -> None:
    c, _ = client
    found = await scrape(c)
    for result in ("allowed", "denied", "error"):
        assert decisions(found, result) == 0
    assert found[("herdgate_webhook_review_duration_seconds_count", ())] == 0
    # The process figures are there too (a registry of its own, with the usual collectors).
    assert any(name.startswith("process_") for name, _ in found)


async def test_reviews_are_counted_by_result(client: Any) -> None:
    c, source = client
    for _ in range(3):
        assert (await c.post("/v1/authenticate", data=review_body(f"token-b7xk2:{SECRET}"))).ok
    for token in ("token-b7xk2:wrong", "token-zzzzz:x", "not-a-herdgate-token"):
        resp = await c.post("/v1/authenticate", data=review_body(token))
        assert resp.status == 200 and not (await resp.json())["status"]["authenticated"]
    assert (await c.post("/v1/authenticate", data=b"nope")).status == 400
    assert (await c.get("/v1/authenticate")).status == 405
    # Elsewhere: not a review, not counted.
    assert (await c.post("/v1/other", data=b"{}")).status == 404
    assert (await c.get("/healthz")).status == 200

    found = await scrape(c)
    assert decisions(found, "allowed") == 3
    assert decisions(found, "denied") == 3
    assert decisions(found, "error") == 2
    # Every answer of the handler is timed (the 405 never reached it).
    assert found[("herdgate_webhook_review_duration_seconds_count", ())] == 7
    assert found[("herdgate_webhook_review_duration_seconds_bucket", (("le", "+Inf"),))] == 7
    assert found[("herdgate_webhook_records", (("kind", "clusterauthtokens"),))] == 1
    assert found[("herdgate_webhook_records", (("kind", "clusteruserattributes"),))] == 1
    assert found[("herdgate_webhook_cache_synced", ())] == 1

    # Not synced: the 503 is an error, and the gauge says so.
    source.synced = False
    source.users = {}
    resp = await c.post("/v1/authenticate", data=review_body(f"token-b7xk2:{SECRET}"))
    assert resp.status == 503
    found = await scrape(c)
    assert decisions(found, "error") == 3
    assert found[("herdgate_webhook_cache_synced", ())] == 0
    assert found[("herdgate_webhook_records", (("kind", "clusteruserattributes"),))] == 0


async def test_a_bug_counts_as_an_error(client: Any) -> None:
    c, source = client
    source.tokens = None  # make the lookup blow up
    resp = await c.post("/v1/authenticate", data=review_body(f"token-b7xk2:{SECRET}"))
    assert resp.status == 500
    source.tokens = make_source().tokens
    found = await scrape(c)
    assert decisions(found, "error") == 1
    assert decisions(found, "allowed") == decisions(found, "denied") == 0


async def test_apps_keep_their_own_counts() -> None:
    metrics = WebhookMetrics()
    first, second = build_app(make_source(), metrics=metrics), build_app(make_source())
    async with TestClient(TestServer(first)) as a, TestClient(TestServer(second)) as b:
        await a.post("/v1/authenticate", data=review_body(f"token-b7xk2:{SECRET}"))
        assert decisions(await scrape(a), "allowed") == 1
        assert decisions(await scrape(b), "allowed") == 0
    value = metrics.registry.get_sample_value(
        "herdgate_webhook_decisions_total", {"result": "allowed"}
    )
    assert value == 1

"""A store failure is a 503 saying the store is unavailable: a Kubernetes ``Status``
under ``/k8s/``, Rancher's error shape elsewhere; the store's details stay in the log."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.operations.app import error_middleware
from gateway.store.base import StoreError, StoreUnavailable


async def _fail(request: web.Request) -> web.Response:
    if request.query.get("kind") == "other":
        raise StoreError("etcd kv/txn: HTTP 400: etcdserver: too many operations in txn")
    raise StoreUnavailable("etcd unreachable (http://10.1.2.3:2379): connection refused")


async def test_store_failures_are_503_with_a_clear_message() -> None:
    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/v3/users", _fail)
    app.router.add_post("/k8s/clusters/c-1/api/v1/namespaces", _fail)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/v3/users")
        assert resp.status == 503 and resp.headers["Retry-After"] == "5"
        body = await resp.json()
        assert body["type"] == "error" and body["code"] == "ServiceUnavailable"
        assert body["message"] == "the store is unavailable; try again later"
        resp = await client.post("/k8s/clusters/c-1/api/v1/namespaces")
        status = await resp.json()
        assert resp.status == 503
        assert (status["kind"], status["code"], status["reason"]) == (
            "Status",
            503,
            "ServiceUnavailable",
        )
        assert status["message"] == "the store is unavailable; try again later"
        resp = await client.post("/v3/users?kind=other")
        body = await resp.json()
        assert resp.status == 503
        assert body["message"] == "the store could not complete the request; try again"
        assert "10.1.2.3" not in await resp.text()

"""The stand-in's HTTP API in-process (no TLS, no subprocess): Status shapes, impersonation,
tables, watch, patch, protobuf, logs, audit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from standin import protobuf
from standin.app import Config, StandIn
from standin.harness import write_token_file

ADMIN = {"Authorization": "Bearer admin-token"}
ALICE = {"Authorization": "Bearer alice-token"}
JSON = {"Content-Type": "application/json"}
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


@dataclass
class Api:
    client: TestClient[Any, Any]
    standin: StandIn
    audit_log: Path

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        hdrs = {**ADMIN, **(headers or {})}
        data: bytes | None = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs.setdefault("Content-Type", content_type)
        resp = await self.client.request(method, path, data=data, headers=hdrs)
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    tokens = write_token_file(
        tmp_path / "tokens.csv",
        {
            "admin-token": ("admin", "uid-admin", ["system:masters"]),
            "alice-token": ("alice", "uid-alice", ["devs"]),
        },
    )
    standin = StandIn(Config(token_file=tokens, audit_log=tmp_path / "audit.log", watch_history=30))
    client: TestClient[Any, Any] = TestClient(
        TestServer(standin.make_app()), timeout=aiohttp.ClientTimeout(total=10)
    )
    await client.start_server()
    yield Api(client, standin, tmp_path / "audit.log")
    await client.close()


def cm(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


CMS = "/api/v1/namespaces/default/configmaps"


# -- authentication and Status shapes -----------------------------------------------------------


async def test_unauthenticated(api: Api) -> None:
    resp = await api.client.get("/api/v1/namespaces")
    assert resp.status == 401
    assert await resp.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }
    resp = await api.client.get("/healthz")
    assert resp.status == 200
    assert await resp.text() == "ok"
    resp = await api.client.get("/version")
    assert (await resp.json())["gitVersion"] == "v1.32.0"


async def test_crud_errors(api: Api) -> None:
    assert (await api.call("POST", CMS, cm("a", k="v")))[0] == 201
    code, body = await api.call("POST", CMS, cm("a"))
    assert code == 409
    assert body["reason"] == "AlreadyExists"
    assert body["message"] == 'configmaps "a" already exists'
    assert body["details"] == {"name": "a", "kind": "configmaps"}

    code, body = await api.call("GET", f"{CMS}/missing")
    assert (code, body["reason"], body["message"]) == (
        404,
        "NotFound",
        'configmaps "missing" not found',
    )
    assert body["details"] == {"name": "missing", "kind": "configmaps"}

    code, body = await api.call("GET", "/apis/apps/v1/namespaces/default/deployments/nope")
    assert body["message"] == 'deployments.apps "nope" not found'
    assert body["details"] == {"name": "nope", "group": "apps", "kind": "deployments"}

    code, got = await api.call("GET", f"{CMS}/a")
    stale = dict(got, data={"k": "new"})
    assert (await api.call("PUT", f"{CMS}/a", stale))[0] == 200
    code, body = await api.call("PUT", f"{CMS}/a", stale)
    assert code == 409
    assert body["reason"] == "Conflict"
    assert body["message"] == (
        'Operation cannot be fulfilled on configmaps "a": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )

    code, body = await api.call("POST", CMS, cm("Bad_Name"))
    assert code == 422
    assert body["reason"] == "Invalid"
    assert body["message"].startswith(
        'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value'
    )
    assert body["details"]["causes"][0]["field"] == "metadata.name"

    code, body = await api.call("POST", CMS, b"x", content_type="text/plain")
    assert (code, body["reason"]) == (415, "UnsupportedMediaType")

    code, body = await api.call("DELETE", "/apis/authentication.k8s.io/v1/selfsubjectreviews/x")
    assert (code, body["reason"]) == (405, "MethodNotAllowed")

    code, body = await api.call("POST", "/api/v1/namespaces/other/configmaps", cm("x"))
    assert (code, body["message"]) == (404, 'namespaces "other" not found')

    bad = cm("b")
    bad["metadata"]["namespace"] = "kube-system"
    code, body = await api.call("POST", CMS, bad)
    assert (code, body["reason"]) == (400, "BadRequest")

    code, body = await api.call("GET", "/api/v1/widgets")
    assert (code, body["message"], body["details"]) == (
        404,
        "the server could not find the requested resource",
        {},
    )

    code, body = await api.call("DELETE", f"{CMS}/a")
    assert code == 200
    assert body["status"] == "Success"
    assert body["details"]["name"] == "a"


async def test_generate_name_and_dry_run(api: Api) -> None:
    code, body = await api.call(
        "POST", CMS, {"metadata": {"generateName": "gen-"}, "data": {"a": "b"}}
    )
    assert code == 201
    assert body["metadata"]["name"].startswith("gen-")
    assert len(body["metadata"]["name"]) == 9
    code, body = await api.call("POST", f"{CMS}?dryRun=All", cm("dry"))
    assert code == 201
    assert (await api.call("GET", f"{CMS}/dry"))[0] == 404


# -- impersonation --------------------------------------------------------------------------------


async def test_impersonation_user_groups_uid_extra(api: Api) -> None:
    headers = {
        "Impersonate-User": "bob",
        "Impersonate-Uid": "u-7",
        "Impersonate-Extra-Example.com%2fteam": "red",
        "Impersonate-Extra-scopes": "a",
    }
    resp = await api.client.post(
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        headers={**ADMIN, **headers, "Impersonate-Group": "g1"},
    )
    assert resp.status == 201
    info = (await resp.json())["status"]["userInfo"]
    assert info == {
        "username": "bob",
        "uid": "u-7",
        "groups": ["g1", "system:authenticated"],
        "extra": {"example.com/team": ["red"], "scopes": ["a"]},
    }
    event = api.audit()[-1]
    assert event["user"]["username"] == "admin"
    assert event["impersonatedUser"] == info


async def test_impersonating_service_account(api: Api) -> None:
    for version in ("v1", "v1beta1", "v1alpha1"):
        code, body = await api.call(
            "POST",
            f"/apis/authentication.k8s.io/{version}/selfsubjectreviews",
            {},
            headers={"Impersonate-User": "system:serviceaccount:ns1:robot"},
        )
        assert code == 201
        assert body["apiVersion"] == f"authentication.k8s.io/{version}"
        assert body["status"]["userInfo"] == {
            "username": "system:serviceaccount:ns1:robot",
            "groups": [
                "system:serviceaccounts",
                "system:serviceaccounts:ns1",
                "system:authenticated",
            ],
        }


async def test_impersonation_denied(api: Api) -> None:
    code, body = await api.call("GET", "/api/v1/pods", headers={**ALICE, "Impersonate-User": "bob"})
    assert code == 403
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'users "bob" is forbidden: User "alice" cannot impersonate resource "users" '
        'in API group "" at the cluster scope',
        "reason": "Forbidden",
        "details": {"name": "bob", "kind": "users"},
        "code": 403,
    }
    code, body = await api.call(
        "GET",
        "/api/v1/pods",
        headers={**ALICE, "Impersonate-User": "system:serviceaccount:kube-system:default"},
    )
    assert body["message"] == (
        'serviceaccounts "default" is forbidden: User "alice" cannot impersonate resource '
        '"serviceaccounts" in API group "" in the namespace "kube-system"'
    )


async def test_impersonation_groups_without_user(api: Api) -> None:
    resp = await api.client.get("/api/v1/pods?x=1", headers={**ADMIN, "Impersonate-Group": "g1"})
    assert resp.status == 500
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert await resp.text() == (
        'Internal Server Error: "/api/v1/pods?x=1": requested [{Group  g1    }] '
        "without impersonating a user\n"
    )


# -- tables and selectors ------------------------------------------------------------------------


async def test_table_and_selectors(api: Api) -> None:
    labelled = cm("l1")
    labelled["metadata"]["labels"] = {"tier": "web"}
    await api.call("POST", CMS, labelled)
    await api.call("POST", CMS, cm("l2", a="1", b="2"))
    code, table = await api.call("GET", CMS, headers={"Accept": TABLE})
    assert code == 200
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Data", "Age"]
    assert [r["cells"][:2] for r in table["rows"]] == [["l1", 0], ["l2", 2]]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    assert table["metadata"]["resourceVersion"]

    code, table = await api.call(
        "GET", f"{CMS}?labelSelector=tier%3Dweb&includeObject=Object", headers={"Accept": TABLE}
    )
    assert [r["object"]["metadata"]["name"] for r in table["rows"]] == ["l1"]
    code, listed = await api.call("GET", f"{CMS}?labelSelector=tier+notin+(web)")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["l2"]
    assert "kind" not in listed["items"][0]
    code, listed = await api.call("GET", f"{CMS}?fieldSelector=metadata.name%3Dl2")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["l2"]
    code, body = await api.call("GET", f"{CMS}?fieldSelector=spec.x%3D1")
    assert (code, body["message"]) == (400, "field label not supported: spec.x")

    code, page = await api.call("GET", f"{CMS}?limit=1")
    assert [i["metadata"]["name"] for i in page["items"]] == ["l1"]
    assert page["metadata"]["remainingItemCount"] == 1
    token = page["metadata"]["continue"]
    code, page = await api.call("GET", f"{CMS}?limit=1&continue={token}")
    assert [i["metadata"]["name"] for i in page["items"]] == ["l2"]
    assert "continue" not in page["metadata"]


async def test_pod_table(api: Api) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }
    code, created = await api.call("POST", "/api/v1/namespaces/default/pods", pod)
    assert code == 201
    assert created["status"]["phase"] == "Running"
    assert created["status"]["podIP"]
    code, table = await api.call(
        "GET", "/api/v1/namespaces/default/pods", headers={"Accept": TABLE}
    )
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names[:5] == ["Name", "Ready", "Status", "Restarts", "Age"]
    assert table["rows"][0]["cells"][:4] == ["p", "1/1", "Running", 0]


# -- watch ---------------------------------------------------------------------------------------


async def _events(api: Api, path: str, count: int, **kw: Any) -> list[dict[str, Any]]:
    resp = await api.client.get(path, headers={**ADMIN, **kw.get("headers", {})})
    assert resp.status == 200
    events: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(5):
            while len(events) < count:
                line = await resp.content.readline()
                if not line:
                    break
                events.append(json.loads(line))
    finally:
        resp.close()
    return events


async def test_watch_resume_and_selector_transitions(api: Api) -> None:
    _, first = await api.call("POST", CMS, cm("w1"))
    rv = first["metadata"]["resourceVersion"]
    labelled = cm("w2")
    labelled["metadata"]["labels"] = {"pick": "me"}
    await api.call("POST", CMS, labelled)
    await api.call(
        "PATCH",
        f"{CMS}/w2",
        {"metadata": {"labels": {"pick": None}}},
        content_type="application/merge-patch+json",
    )
    events = await _events(api, f"{CMS}?watch=1&resourceVersion={rv}&labelSelector=pick", 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "w2"),
        ("DELETED", "w2"),
    ]

    async def later() -> None:
        await asyncio.sleep(0.2)
        await api.call("POST", CMS, cm("w3"))

    task = asyncio.create_task(later())
    events = await _events(api, f"{CMS}?watch=true", 3)
    await task
    assert [e["object"]["metadata"]["name"] for e in events] == ["w1", "w2", "w3"]


async def test_watch_too_old(api: Api) -> None:
    for i in range(35):  # history holds 30 events
        await api.call("POST", CMS, cm(f"old{i}"))
    events = await _events(api, f"{CMS}?watch=1&resourceVersion=2", 1)
    assert events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert (status["code"], status["reason"]) == (410, "Expired")
    assert status["message"].startswith("too old resource version: 2 (")


async def test_watch_table_headers_once_and_initial_events(api: Api) -> None:
    await api.call("POST", CMS, cm("t1"))
    await api.call("POST", CMS, cm("t2"))
    events = await _events(api, f"{CMS}?watch=1", 2, headers={"Accept": TABLE})
    assert events[0]["object"]["kind"] == "Table"
    assert events[0]["object"]["columnDefinitions"]
    assert events[1]["object"]["columnDefinitions"] is None
    events = await _events(api, f"{CMS}?watch=1&sendInitialEvents=true&allowWatchBookmarks=true", 3)
    assert [e["type"] for e in events] == ["ADDED", "ADDED", "BOOKMARK"]
    assert events[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}

    resp = await api.client.get(f"{CMS}?watch=1&timeoutSeconds=1", headers=ADMIN)
    async with asyncio.timeout(5):
        body = await resp.read()
    assert len(body.splitlines()) == 2


# -- patch ---------------------------------------------------------------------------------------


async def test_patch_flavours(api: Api) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pp"},
        "spec": {
            "containers": [
                {"name": "a", "image": "img:1", "env": [{"name": "X", "value": "1"}]},
                {"name": "b", "image": "img:1"},
            ]
        },
    }
    path = "/api/v1/namespaces/default/pods/pp"
    await api.call("POST", "/api/v1/namespaces/default/pods", pod)
    code, got = await api.call(
        "PATCH",
        path,
        {"spec": {"containers": [{"name": "b", "image": "img:2"}]}},
        content_type="application/strategic-merge-patch+json",
    )
    assert code == 200
    assert [c["image"] for c in got["spec"]["containers"]] == ["img:1", "img:2"]
    assert got["spec"]["containers"][0]["env"] == [{"name": "X", "value": "1"}]
    code, got = await api.call(
        "PATCH",
        path,
        [{"op": "add", "path": "/metadata/labels", "value": {"x": "y"}}],
        content_type="application/json-patch+json",
    )
    assert (code, got["metadata"]["labels"]) == (200, {"x": "y"})
    code, body = await api.call(
        "PATCH",
        path,
        [{"op": "remove", "path": "/metadata/nothing"}],
        content_type="application/json-patch+json",
    )
    assert (code, body["reason"]) == (422, "Invalid")

    applied = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  a: '1'\n"
    code, got = await api.call(
        "PATCH",
        f"{CMS}/ssa?fieldManager=test",
        applied,
        content_type="application/apply-patch+yaml",
    )
    assert (code, got["data"]) == (201, {"a": "1"})
    code, got = await api.call(
        "PATCH",
        f"{CMS}/ssa?fieldManager=test",
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  b: '2'\n",
        content_type="application/apply-patch+yaml",
    )
    assert (code, got["data"]) == (200, {"a": "1", "b": "2"})


# -- protobuf ------------------------------------------------------------------------------------


async def test_protobuf_bodies(api: Api) -> None:
    body = protobuf.encode_object(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "pb", "labels": {"a": "b"}},
            "data": {"k": "v"},
            "binaryData": {"bin": "AAE="},
        }
    )
    code, got = await api.call(
        "POST",
        CMS,
        body,
        content_type="application/vnd.kubernetes.protobuf",
        headers={"Accept": "application/vnd.kubernetes.protobuf,application/json"},
    )
    assert code == 201
    assert got["metadata"]["labels"] == {"a": "b"}
    assert (got["data"], got["binaryData"]) == ({"k": "v"}, {"bin": "AAE="})

    ssar = protobuf.encode_object(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "metadata": {},
            "spec": {"resourceAttributes": {"verb": "get", "resource": "pods"}},
        }
    )
    code, got = await api.call(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        ssar,
        content_type="application/vnd.kubernetes.protobuf",
    )
    assert code == 201
    assert got["status"]["allowed"] is True
    assert got["spec"]["resourceAttributes"] == {"verb": "get", "resource": "pods"}

    code, got = await api.call(
        "POST", CMS, b"not protobuf", content_type="application/vnd.kubernetes.protobuf"
    )
    assert (code, got["reason"]) == (400, "BadRequest")


# -- pods: logs and streaming parameters ---------------------------------------------------------


async def test_logs(api: Api) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "lp", "annotations": {"standin.herdgate.dev/log": "a\nb\nc"}},
        "spec": {"containers": [{"name": "one", "image": "x"}, {"name": "two", "image": "x"}]},
    }
    await api.call("POST", "/api/v1/namespaces/default/pods", pod)
    logs = "/api/v1/namespaces/default/pods/lp/log"
    code, body = await api.call("GET", logs)
    assert (code, body["message"]) == (
        400,
        "a container name must be specified for pod lp, choose one of: [one two]",
    )
    code, body = await api.call("GET", f"{logs}?container=three")
    assert (code, body["message"]) == (400, "container three is not valid for pod lp")
    resp = await api.client.get(f"{logs}?container=one&tailLines=2", headers=ADMIN)
    assert resp.headers["Content-Type"] == "text/plain"
    assert await resp.text() == "b\nc\n"
    resp = await api.client.get(f"{logs}?container=two&timestamps=true", headers=ADMIN)
    first = (await resp.text()).splitlines()[0]
    stamp, line = first.split(" ", 1)
    assert line == "a"
    assert stamp.endswith("Z")
    resp = await api.client.get(f"{logs}?container=one&follow=true", headers=ADMIN)
    lines: list[bytes] = []
    async with asyncio.timeout(5):
        while len(lines) < 5:
            lines.append(await resp.content.readline())
    resp.close()
    assert lines == [b"a\n", b"b\n", b"c\n", b"line 4\n", b"line 5\n"]


async def test_exec_parameters_checked_before_streaming(api: Api) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ex"},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }
    await api.call("POST", "/api/v1/namespaces/default/pods", pod)
    code, body = await api.call(
        "POST", "/api/v1/namespaces/default/pods/ex/exec?stdout=true&container=c"
    )
    assert (code, body["message"]) == (400, "you must specify at least 1 command")
    code, body = await api.call("POST", "/api/v1/namespaces/default/pods/nope/exec?command=ls")
    assert (code, body["message"]) == (404, 'pods "nope" not found')


# -- lifecycle -----------------------------------------------------------------------------------


async def test_finalizers_and_namespace_deletion(api: Api) -> None:
    await api.call("POST", "/api/v1/namespaces", {"metadata": {"name": "tmp"}})
    obj = cm("held")
    obj["metadata"]["finalizers"] = ["example.com/hold"]
    await api.call("POST", "/api/v1/namespaces/tmp/configmaps", obj)
    code, got = await api.call("DELETE", "/api/v1/namespaces/tmp/configmaps/held")
    assert code == 202
    assert got["metadata"]["deletionTimestamp"]
    got["metadata"]["finalizers"] = []
    code, _ = await api.call("PUT", "/api/v1/namespaces/tmp/configmaps/held", got)
    assert code == 200
    assert (await api.call("GET", "/api/v1/namespaces/tmp/configmaps/held"))[0] == 404

    await api.call("POST", "/api/v1/namespaces/tmp/configmaps", cm("gone"))
    await api.call("DELETE", "/api/v1/namespaces/tmp")
    assert (await api.call("GET", "/api/v1/namespaces/tmp/configmaps/gone"))[0] == 404


async def test_crd_serves_custom_resources(api: Api) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "tokens.herdgate.dev"},
        "spec": {
            "group": "herdgate.dev",
            "scope": "Cluster",
            "names": {"plural": "tokens", "singular": "token", "kind": "Token"},
            "versions": [
                {"name": "v1alpha1", "served": True, "storage": False},
                {"name": "v1", "served": True, "storage": True, "subresources": {"status": {}}},
            ],
        },
    }
    code, created = await api.call(
        "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd
    )
    assert code == 201
    assert {c["type"] for c in created["status"]["conditions"]} == {
        "Established",
        "NamesAccepted",
    }
    code, groups = await api.call("GET", "/apis")
    group = next(g for g in groups["groups"] if g["name"] == "herdgate.dev")
    assert group["preferredVersion"]["version"] == "v1"
    code, resources = await api.call("GET", "/apis/herdgate.dev/v1")
    assert [r["name"] for r in resources["resources"]] == ["tokens", "tokens/status"]

    tok = {"apiVersion": "herdgate.dev/v1", "kind": "Token", "metadata": {"name": "t1"}}
    code, got = await api.call("POST", "/apis/herdgate.dev/v1/tokens", dict(tok, spec={"a": 1}))
    assert (code, got["metadata"]["generation"]) == (201, 1)
    code, got = await api.call("GET", "/apis/herdgate.dev/v1alpha1/tokens/t1")
    assert got["apiVersion"] == "herdgate.dev/v1alpha1"
    code, listed = await api.call("GET", "/apis/herdgate.dev/v1/tokens")
    assert listed["items"][0]["kind"] == "Token"  # custom resources keep their TypeMeta
    code, got = await api.call(
        "PATCH",
        "/apis/herdgate.dev/v1/tokens/t1/status",
        {"status": {"ok": True}},
        content_type="application/merge-patch+json",
    )
    assert (code, got["status"], got["metadata"]["generation"]) == (200, {"ok": True}, 1)
    code, got = await api.call(
        "PATCH",
        "/apis/herdgate.dev/v1/tokens/t1",
        {"spec": {"a": 2}, "status": {"ok": False}},
        content_type="application/merge-patch+json",
    )
    assert (got["status"], got["metadata"]["generation"]) == ({"ok": True}, 2)
    code, _ = await api.call("POST", "/apis/herdgate.dev/v1/namespaces/default/tokens", tok)
    assert code == 404

    await api.call(
        "DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/tokens.herdgate.dev"
    )
    assert (await api.call("GET", "/apis/herdgate.dev/v1/tokens"))[0] == 404


async def test_audit_fields(api: Api) -> None:
    await api.call("POST", CMS, cm("audited"), headers={"User-Agent": "tester/1.0"})
    event = api.audit()[-1]
    assert event["verb"] == "create"
    assert event["requestURI"] == CMS
    assert event["user"] == {
        "username": "admin",
        "uid": "uid-admin",
        "groups": ["system:masters", "system:authenticated"],
    }
    assert event["responseStatus"]["code"] == 201
    assert event["userAgent"] == "tester/1.0"
    assert event["requestContentType"] == "application/json"
    assert event["objectRef"] == {
        "resource": "configmaps",
        "namespace": "default",
        "apiVersion": "v1",
    }
    assert "impersonatedUser" not in event


AGGREGATED = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,"
    "application/json"
)


async def test_discovery(api: Api) -> None:
    resp = await api.client.get("/apis", headers={**ADMIN, "Accept": AGGREGATED})
    assert resp.headers["Content-Type"] == (
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    )
    doc = await resp.json()
    assert doc["kind"] == "APIGroupDiscoveryList"
    apps = next(i for i in doc["items"] if i["metadata"]["name"] == "apps")
    deployments = next(
        r for r in apps["versions"][0]["resources"] if r["resource"] == "deployments"
    )
    assert deployments["scope"] == "Namespaced"
    assert deployments["responseKind"] == {"group": "", "version": "", "kind": "Deployment"}
    assert {s["subresource"] for s in deployments["subresources"]} == {"scale", "status"}

    resp = await api.client.get("/api", headers={**ADMIN, "Accept": AGGREGATED})
    core = (await resp.json())["items"]
    assert [i["metadata"]["name"] for i in core] == [""]
    assert "pods" in {r["resource"] for r in core[0]["versions"][0]["resources"]}

    _, versions = await api.call("GET", "/api")
    assert versions["kind"] == "APIVersions"
    _, groups = await api.call("GET", "/apis")
    assert groups["kind"] == "APIGroupList"
    _, resources = await api.call("GET", "/api/v1")
    pods = next(r for r in resources["resources"] if r["name"] == "pods")
    assert pods["shortNames"] == ["po"]
    assert "pods/exec" in {r["name"] for r in resources["resources"]}

    _, root = await api.call("GET", "/openapi/v3")
    assert "api/v1" in root["paths"]
    _, spec = await api.call("GET", root["paths"]["api/v1"]["serverRelativeURL"])
    patch_op = spec["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"]
    assert {"name": "fieldValidation", "in": "query"}.items() <= patch_op["parameters"][2].items()
    assert patch_op["x-kubernetes-group-version-kind"] == {
        "group": "",
        "version": "v1",
        "kind": "ConfigMap",
    }


async def test_scale_and_deployment_status(api: Api) -> None:
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "selector": {"matchLabels": {"app": "d"}},
            "template": {
                "metadata": {"labels": {"app": "d"}},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            },
        },
    }
    path = "/apis/apps/v1/namespaces/default/deployments"
    code, got = await api.call("POST", path, deploy)
    assert (code, got["status"]["availableReplicas"]) == (201, 1)
    code, scale = await api.call("GET", f"{path}/d/scale")
    assert scale["spec"] == {"replicas": 1}
    assert scale["status"] == {"replicas": 1, "selector": "app=d"}
    code, scale = await api.call(
        "PATCH",
        f"{path}/d/scale",
        {"spec": {"replicas": 4}},
        content_type="application/merge-patch+json",
    )
    assert (code, scale["spec"]["replicas"]) == (200, 4)
    code, got = await api.call("GET", f"{path}/d")
    assert got["spec"]["replicas"] == 4
    assert got["status"]["readyReplicas"] == 4
    assert got["status"]["observedGeneration"] == got["metadata"]["generation"] == 2

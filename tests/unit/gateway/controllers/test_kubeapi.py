"""The controllers' own Kubernetes client against kubernetes-asyncio (the reference).

Every call the controllers make is sent twice to a recording server on a Unix socket:
once by ``kubeapi.KubeClient`` with the path the controller builds, once by
kubernetes-asyncio's generated method for the same operation; method, path, query
(values as the API server parses them) and JSON body must be the same. Errors: both see
the same status and body, and a stream opened here is checked where kubernetes-asyncio's
``_preload_content=False`` was not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp import web

from ace import manifests
from ace.manifests import NAMESPACE
from ace.records import GROUP, TOKEN_PLURAL, USER_PLURAL, VERSION
from gateway.controllers import access_sync
from gateway.controllers.access_sync import (
    CLUSTER_ROLE,
    CLUSTER_ROLE_BINDING,
    ESCALATE_REVIEW,
    ROLE_BINDING,
    SYNC_SELECTOR,
)
from gateway.controllers.kubeapi import (
    APIEXTENSIONS,
    AUTHORIZATION,
    MAX_ERROR_BODY,
    ApiError,
    KubeClient,
    query,
    resource_path,
)

Seen = tuple[str, str, dict[str, list[str]], Any]

ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "herdgate-rt-a", "labels": {"herdgate.io/managed": "true"}},
    "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
}
BINDING = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "RoleBinding",
    "metadata": {"name": "herdgate-b", "namespace": "team-a"},
    "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "herdgate-rt-a",
    },
    "subjects": [{"kind": "User", "name": "u-1", "apiGroup": "rbac.authorization.k8s.io"}],
}
RECORD = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "ClusterAuthToken",
    "metadata": {"name": "t-1", "namespace": NAMESPACE, "resourceVersion": "7"},
    "userName": "u-1",
}
VERSION_DOC = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0",
    "gitCommit": "0",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.23",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def _parsed_query(request: web.Request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in request.query.items():
        # What the API server reads: Go's strconv.ParseBool takes True/true/1 alike.
        parsed = {"True": "true", "False": "false"}.get(value, value)
        out.setdefault(key, []).append(parsed)
    return out


@dataclass
class _Streamed:
    """An answer its own handler writes (in chunks, slowly)."""

    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Rig:
    """This module's client and kubernetes-asyncio's on one session to a recording
    server: what it saw (``seen``) and what it answers by path (``answers``)."""

    ours: KubeClient
    ref: Any
    seen: list[Seen]
    answers: dict[str, Any]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    from kubernetes_asyncio.client import ApiClient, Configuration

    seen: list[Seen] = []
    answers: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        raw_path = request.raw_path.partition("?")[0]
        seen.append((request.method, raw_path, _parsed_query(request), body))
        answer = answers.get(request.path)
        if isinstance(answer, _Streamed):
            return await answer.handler(request)
        if isinstance(answer, tuple):
            status, text = answer
            return web.Response(status=status, text=text, content_type="application/json")
        if answer is not None:
            return web.json_response(answer)
        if body is not None:
            return web.json_response(body)  # a create or replace: the object back
        if raw_path.rstrip("/").endswith("/version"):
            return web.json_response(VERSION_DOC)
        return web.json_response({"metadata": {"resourceVersion": "41"}, "items": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    path = str(tmp_path / "k.sock")
    await web.UnixSite(runner, path).start()
    session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path))
    base = "http://herdgate-internal/clusters/c-1"
    reference = ApiClient(Configuration(host=base))
    unused = reference.rest_client.pool_manager
    reference.rest_client.pool_manager = session
    await unused.close()
    yield Rig(KubeClient(session, base), reference, seen, answers)
    await session.close()
    await runner.cleanup()


Call = Callable[[], Awaitable[Any]]


def _cases(ours: KubeClient, ref: Any) -> list[tuple[str, Call, Call]]:
    from kubernetes_asyncio.client import (
        ApiextensionsV1Api,
        AuthorizationV1Api,
        CoreV1Api,
        CustomObjectsApi,
        RbacAuthorizationV1Api,
        VersionApi,
    )

    core, rbac, custom = CoreV1Api(ref), RbacAuthorizationV1Api(ref), CustomObjectsApi(ref)
    authz: Any = AuthorizationV1Api(ref)
    crd = manifests.crds()[0]
    ns_doc = manifests.namespace()
    users = resource_path(GROUP, VERSION, USER_PLURAL, namespace=NAMESPACE)
    tokens = resource_path(GROUP, VERSION, TOKEN_PLURAL, namespace=NAMESPACE)
    path = access_sync._path
    watch = {
        "watch": True,
        "resourceVersion": "41",
        "allowWatchBookmarks": True,
        "timeoutSeconds": 240,
    }
    ref_watch = {
        "watch": True,
        "resource_version": "41",
        "allow_watch_bookmarks": True,
        "timeout_seconds": 240,
    }

    async def stream_read(p: str, params: Any) -> bytes:
        async with ours.stream(p, params, timeout_s=30) as response:
            return await response.read()

    async def ref_stream(call: Callable[..., Awaitable[Any]], **kw: Any) -> bytes:
        response = await call(_preload_content=False, **kw)
        async with response:
            data: bytes = await response.read()
            return data

    return [
        # cluster_controller: probe, lists and watches
        (
            "readyz",
            lambda: ours.call("GET", "/readyz"),
            lambda: ref.rest_client.GET(f"{ref.configuration.host}/readyz"),
        ),
        ("version", lambda: ours.get("/version"), lambda: VersionApi(ref).get_code()),
        (
            "list nodes",
            lambda: ours.get(resource_path("", "v1", "nodes"), timeout_s=60),
            lambda: ref_stream(core.list_node, _request_timeout=60),
        ),
        (
            "watch nodes",
            lambda: stream_read(resource_path("", "v1", "nodes"), watch),
            lambda: ref_stream(core.list_node, **ref_watch),
        ),
        (
            "watch namespaces",
            lambda: stream_read(resource_path("", "v1", "namespaces"), watch),
            lambda: ref_stream(core.list_namespace, **ref_watch),
        ),
        # ace_sync
        (
            "read namespace",
            lambda: ours.get(resource_path("", "v1", "namespaces", name=NAMESPACE)),
            lambda: core.read_namespace(NAMESPACE),
        ),
        (
            "create namespace",
            lambda: ours.create(resource_path("", "v1", "namespaces"), ns_doc),
            lambda: core.create_namespace(ns_doc),
        ),
        (
            "create crd",
            lambda: ours.create(
                resource_path(APIEXTENSIONS, "v1", "customresourcedefinitions"), crd
            ),
            lambda: ApiextensionsV1Api(ref).create_custom_resource_definition(crd),
        ),
        (
            "list records",
            lambda: ours.get(users),
            lambda: custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, USER_PLURAL),
        ),
        (
            "create record",
            lambda: ours.create(tokens, RECORD),
            lambda: custom.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, TOKEN_PLURAL, RECORD
            ),
        ),
        (
            "replace record",
            lambda: ours.replace(
                resource_path(GROUP, VERSION, TOKEN_PLURAL, namespace=NAMESPACE, name="t-1"), RECORD
            ),
            lambda: custom.replace_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, TOKEN_PLURAL, "t-1", RECORD
            ),
        ),
        (
            "delete record",
            lambda: ours.delete(
                resource_path(GROUP, VERSION, TOKEN_PLURAL, namespace=NAMESPACE, name="t-1")
            ),
            lambda: custom.delete_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, TOKEN_PLURAL, "t-1"
            ),
        ),
        (
            "list nodes whole",
            lambda: ours.get(resource_path("", "v1", "nodes")),
            core.list_node,
        ),
        # access_sync
        (
            "self review",
            lambda: ours.create(
                resource_path(AUTHORIZATION, "v1", "selfsubjectaccessreviews"), ESCALATE_REVIEW
            ),
            lambda: authz.create_self_subject_access_review(ESCALATE_REVIEW),
        ),
        (
            "list namespaces",
            lambda: ours.get(resource_path("", "v1", "namespaces")),
            core.list_namespace,
        ),
        (
            "list roles",
            lambda: ours.get(path(CLUSTER_ROLE), {"labelSelector": SYNC_SELECTOR}),
            lambda: rbac.list_cluster_role(label_selector=SYNC_SELECTOR),
        ),
        (
            "list cluster bindings",
            lambda: ours.get(path(CLUSTER_ROLE_BINDING), {"labelSelector": SYNC_SELECTOR}),
            lambda: rbac.list_cluster_role_binding(label_selector=SYNC_SELECTOR),
        ),
        (
            "list bindings",
            lambda: ours.get(path(ROLE_BINDING), {"labelSelector": SYNC_SELECTOR}),
            lambda: rbac.list_role_binding_for_all_namespaces(label_selector=SYNC_SELECTOR),
        ),
        (
            "read role",
            lambda: ours.get(path(CLUSTER_ROLE, name="herdgate-rt-a")),
            lambda: rbac.read_cluster_role("herdgate-rt-a"),
        ),
        (
            "create role",
            lambda: ours.create(path(CLUSTER_ROLE), ROLE),
            lambda: rbac.create_cluster_role(ROLE),
        ),
        (
            "create cluster binding",
            lambda: ours.create(path(CLUSTER_ROLE_BINDING), BINDING),
            lambda: rbac.create_cluster_role_binding(BINDING),
        ),
        (
            "create binding",
            lambda: ours.create(path(ROLE_BINDING, "team-a"), BINDING),
            lambda: rbac.create_namespaced_role_binding("team-a", BINDING),
        ),
        (
            "replace role",
            lambda: ours.replace(path(CLUSTER_ROLE, name="herdgate-rt-a"), ROLE),
            lambda: rbac.replace_cluster_role("herdgate-rt-a", ROLE),
        ),
        (
            "replace cluster binding",
            lambda: ours.replace(path(CLUSTER_ROLE_BINDING, name="herdgate-b"), BINDING),
            lambda: rbac.replace_cluster_role_binding("herdgate-b", BINDING),
        ),
        (
            "replace binding",
            lambda: ours.replace(path(ROLE_BINDING, "team-a", "herdgate-b"), BINDING),
            lambda: rbac.replace_namespaced_role_binding("herdgate-b", "team-a", BINDING),
        ),
        (
            "delete role",
            lambda: ours.delete(path(CLUSTER_ROLE, name="herdgate-rt-a")),
            lambda: rbac.delete_cluster_role("herdgate-rt-a"),
        ),
        (
            "delete cluster binding",
            lambda: ours.delete(path(CLUSTER_ROLE_BINDING, name="herdgate-b")),
            lambda: rbac.delete_cluster_role_binding("herdgate-b"),
        ),
        (
            "delete binding",
            lambda: ours.delete(path(ROLE_BINDING, "team-a", "herdgate-b")),
            lambda: rbac.delete_namespaced_role_binding("herdgate-b", "team-a"),
        ),
    ]


async def test_every_call_the_controllers_make_is_sent_as_kubernetes_asyncio_sends_it(
    rig: Rig,
) -> None:
    ours, ref, seen = rig.ours, rig.ref, rig.seen
    cases = _cases(ours, ref)
    assert len({name for name, _, _ in cases}) == len(cases)
    for name, mine, theirs in cases:
        seen.clear()
        await mine()
        await theirs()
        assert len(seen) == 2, name
        if name == "version":
            # kubernetes-asyncio asks for /version/; kubectl and this client for /version
            # (the API server serves both).
            assert seen[1][1].endswith("/version/")
            seen[1] = (seen[1][0], seen[1][1].rstrip("/"), *seen[1][2:])
        assert seen[0] == seen[1], name
        assert seen[0][1].startswith("/clusters/c-1/"), name


async def test_names_are_quoted_whole_as_kubernetes_asyncio_quotes_them(
    rig: Rig,
) -> None:
    from kubernetes_asyncio.client import RbacAuthorizationV1Api

    ours, ref, seen = rig.ours, rig.ref, rig.seen
    rbac = RbacAuthorizationV1Api(ref)
    for name in ("a/b", "..", "x?y=1", "p%2Fq", "sp ace", "ü"):
        seen.clear()
        await ours.delete(access_sync._path(ROLE_BINDING, "ns/../x", name))
        await rbac.delete_namespaced_role_binding(name, "ns/../x")
        assert seen[0] == seen[1], name
        if name != "..":  # (both clients' URL library drops a ".." segment)
            namespace, _, last = seen[0][1].rpartition("/rolebindings/")
            assert (unquote(namespace.rpartition("/")[2]), unquote(last)) == ("ns/../x", name)


async def test_an_error_answer_raises_with_the_status_and_body_the_reference_sees(
    rig: Rig,
) -> None:
    from kubernetes_asyncio.client import CoreV1Api
    from kubernetes_asyncio.client.exceptions import ApiException

    ours, ref, answers = rig.ours, rig.ref, rig.answers
    status = {
        "kind": "Status",
        "status": "Failure",
        "reason": "NotFound",
        "message": 'namespaces "x" not found',
        "code": 404,
    }
    path = resource_path("", "v1", "namespaces", name="x")
    answers[f"/clusters/c-1{path}"] = (404, json.dumps(status))
    with pytest.raises(ApiError) as mine:
        await ours.get(path)
    with pytest.raises(ApiException) as theirs:
        await CoreV1Api(ref).read_namespace("x")
    assert (mine.value.status, mine.value.body) == (theirs.value.status, theirs.value.body)
    assert mine.value.reason == theirs.value.reason == "Not Found"
    assert mine.value.status_doc() == status
    assert mine.value.message() == 'namespaces "x" not found'
    assert str(mine.value) == '(404) Not Found: namespaces "x" not found'


async def test_a_stream_is_checked_before_it_is_read(
    rig: Rig,
) -> None:
    """kubernetes-asyncio handed a 403 or 500 to a ``_preload_content=False`` caller as
    if it were the list: a controller then read a Status as an empty list."""
    ours, answers = rig.ours, rig.answers
    path = resource_path("", "v1", "nodes")
    answers[f"/clusters/c-1{path}"] = (410, '{"kind":"Status","code":410,"message":"too old"}')
    with pytest.raises(ApiError) as raised:
        async with ours.stream(path, {"watch": True}):
            raise AssertionError("a 410 was handed on as a stream")
    assert raised.value.status == 410
    assert raised.value.message() == "too old"


async def test_hostile_error_bodies_are_cut_and_described(
    rig: Rig,
) -> None:
    ours, answers = rig.ours, rig.answers
    for body, message in (
        ("x" * (4 * MAX_ERROR_BODY), "x" * 100),
        ("[" * 100_000, "[" * 100),
        ("", "Internal Server Error"),
        ('{"kind":"Status","message":7}', '{"kind":"Status","message":7}'),
        ("\x00\r\nImpersonate-User: admin", "\x00"),
    ):
        answers["/clusters/c-1/readyz"] = (500, body)
        with pytest.raises(ApiError) as raised:
            await ours.call("GET", "/readyz")
        assert len(raised.value.body) <= MAX_ERROR_BODY
        assert raised.value.message().startswith(message[:20])
        assert len(str(raised.value)) <= 512


async def test_an_error_body_in_several_chunks_is_read_whole(rig: Rig) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=403, reason="Forbidden")
        await response.prepare(request)
        for part in (b'{"kind":"Status",', b'"message":"nodes is forbidden",', b'"code":403}'):
            await response.write(part)
            await asyncio.sleep(0.02)
        await response.write_eof()
        return response

    rig.answers["/clusters/c-1/api/v1/nodes"] = _Streamed(slow)
    with pytest.raises(ApiError) as raised:
        await rig.ours.get(resource_path("", "v1", "nodes"))
    assert raised.value.message() == "nodes is forbidden"


async def test_an_answer_that_is_not_an_object_is_an_error(
    rig: Rig,
) -> None:
    ours, answers = rig.ours, rig.answers
    answers["/clusters/c-1/version"] = [1, 2]
    with pytest.raises(ValueError, match="not an object"):
        await ours.get("/version")


def test_query_values_are_what_the_api_server_parses() -> None:
    assert query(
        {
            "watch": True,
            "allowWatchBookmarks": False,
            "timeoutSeconds": 240,
            "labelSelector": "a=b,c in (d)",
        }
    ) == {
        "watch": "true",
        "allowWatchBookmarks": "false",
        "timeoutSeconds": "240",
        "labelSelector": "a=b,c in (d)",
    }
    assert query(None) == {}


def test_paths_of_core_and_named_groups() -> None:
    assert resource_path("", "v1", "nodes") == "/api/v1/nodes"
    assert resource_path("", "v1", "namespaces", name="a") == "/api/v1/namespaces/a"
    assert (
        resource_path("rbac.authorization.k8s.io", "v1", "rolebindings", namespace="n", name="b")
        == "/apis/rbac.authorization.k8s.io/v1/namespaces/n/rolebindings/b"
    )
    assert resource_path("g", "v1", "x", namespace="a/b", name="../c") == (
        "/apis/g/v1/namespaces/a%2Fb/x/..%2Fc"
    )

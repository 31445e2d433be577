"""request_info: the kube-apiserver reading of a path (verb, resource, namespace, name)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.proxy.requestinfo import RequestInfo, request_info

# (method, target, verb, resource, namespace, name, group)
CASES: list[tuple[str, str, str, str, str, str, str]] = [
    # core, namespaced
    ("GET", "/api/v1/namespaces/ns/pods", "list", "pods", "ns", "", ""),
    ("GET", "/api/v1/namespaces/ns/pods/web-0", "get", "pods", "ns", "web-0", ""),
    ("HEAD", "/api/v1/namespaces/ns/pods/web-0", "get", "pods", "ns", "web-0", ""),
    ("POST", "/api/v1/namespaces/ns/pods", "create", "pods", "ns", "", ""),
    ("PUT", "/api/v1/namespaces/ns/pods/web-0", "update", "pods", "ns", "web-0", ""),
    ("PATCH", "/api/v1/namespaces/ns/pods/web-0", "patch", "pods", "ns", "web-0", ""),
    ("DELETE", "/api/v1/namespaces/ns/pods/web-0", "delete", "pods", "ns", "web-0", ""),
    ("DELETE", "/api/v1/namespaces/ns/pods", "deletecollection", "pods", "ns", "", ""),
    # core, cluster-scoped and across namespaces
    ("GET", "/api/v1/nodes", "list", "nodes", "", "", ""),
    ("GET", "/api/v1/nodes/n1", "get", "nodes", "", "n1", ""),
    ("GET", "/api/v1/pods", "list", "pods", "", "", ""),
    ("PATCH", "/api/v1/nodes/n1/status", "patch", "nodes/status", "", "n1", ""),
    # the namespace object itself
    ("GET", "/api/v1/namespaces", "list", "namespaces", "", "", ""),
    ("GET", "/api/v1/namespaces/foo", "get", "namespaces", "foo", "foo", ""),
    ("DELETE", "/api/v1/namespaces/foo", "delete", "namespaces", "foo", "foo", ""),
    ("POST", "/api/v1/namespaces", "create", "namespaces", "", "", ""),
    ("PUT", "/api/v1/namespaces/foo/finalize", "update", "namespaces/finalize", "foo", "foo", ""),
    ("GET", "/api/v1/namespaces/foo/status", "get", "namespaces/status", "foo", "foo", ""),
    # groups
    ("GET", "/apis/apps/v1/deployments", "list", "deployments", "", "", "apps"),
    ("GET", "/apis/apps/v1/namespaces/ns/deployments", "list", "deployments", "ns", "", "apps"),
    ("GET", "/apis/apps/v1/namespaces/ns/deployments/web", "get", "deployments", "ns", "web",
     "apps"),
    ("PUT", "/apis/apps/v1/namespaces/ns/deployments/web/scale", "update", "deployments/scale",
     "ns", "web", "apps"),
    ("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/view", "get", "clusterroles", "",
     "view", "rbac.authorization.k8s.io"),
    ("DELETE", "/apis/batch/v1/namespaces/ns/jobs", "deletecollection", "jobs", "ns", "", "batch"),
    # subresources
    ("GET", "/api/v1/namespaces/ns/pods/web-0/log", "get", "pods/log", "ns", "web-0", ""),
    ("GET", "/api/v1/namespaces/ns/pods/web-0/log?container=c", "get", "pods/log", "ns", "web-0",
     ""),
    ("POST", "/api/v1/namespaces/ns/pods/web-0/eviction", "create", "pods/eviction", "ns",
     "web-0", ""),
    ("GET", "/api/v1/namespaces/ns/services/s:80/proxy/a/b", "get", "services/proxy", "ns",
     "s:80", ""),
    # watches
    ("GET", "/api/v1/namespaces/ns/pods?watch=true", "watch", "pods", "ns", "", ""),
    ("GET", "/api/v1/namespaces/ns/pods?watch=1", "watch", "pods", "ns", "", ""),
    ("GET", "/api/v1/pods?labelSelector=a%3Db&watch=true&resourceVersion=5", "watch", "pods",
     "", "", ""),
    ("GET", "/api/v1/namespaces/ns/pods?watch=false", "list", "pods", "ns", "", ""),
    ("GET", "/api/v1/namespaces/ns/pods?watch=0", "list", "pods", "ns", "", ""),
    ("GET", "/api/v1/namespaces/ns/pods?watch", "watch", "pods", "ns", "", ""),
    ("GET", "/api/v1/watch/namespaces/ns/pods", "watch", "pods", "ns", "", ""),
    ("GET", "/api/v1/watch/namespaces/ns/pods/web-0", "watch", "pods", "ns", "web-0", ""),
    ("GET", "/apis/apps/v1/watch/deployments", "watch", "deployments", "", "", "apps"),
    ("GET", "/api/v1/watch/namespaces", "watch", "namespaces", "", "", ""),
    # a named GET is a get, whatever ?watch says (as kube-apiserver reads it)
    ("GET", "/api/v1/namespaces/ns/pods/web-0?watch=true", "get", "pods", "ns", "web-0", ""),
    # kubectl get pod web-0 --watch: a watch of one object, named by its field selector
    ("GET", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3Dweb-0&watch=true",
     "watch", "pods", "ns", "web-0", ""),
    ("GET", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3D%3Dweb-0", "list", "pods",
     "ns", "web-0", ""),
    ("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1,metadata.name%3Dp", "list", "pods",
     "", "p", ""),
    ("GET", "/api/v1/pods?fieldSelector=metadata.name%21%3Dp", "list", "pods", "", "", ""),
    ("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1", "list", "pods", "", "", ""),
    ("DELETE", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3Dp", "deletecollection",
     "pods", "ns", "", ""),
    # discovery and non-resource requests: the lower-case method
    ("GET", "/api", "get", "", "", "", ""),
    ("GET", "/api/v1", "get", "", "", "", ""),
    ("GET", "/apis", "get", "", "", "", ""),
    ("GET", "/apis/apps", "get", "", "", "", ""),
    ("GET", "/apis/apps/v1", "get", "", "", "", ""),
    ("GET", "/apis/apps/v1/", "get", "", "", "", ""),
    ("GET", "/version", "get", "", "", "", ""),
    ("GET", "/version?timeout=32s", "get", "", "", "", ""),
    ("GET", "/openapi/v3", "get", "", "", "", ""),
    ("GET", "/openapi/v3/apis/apps/v1?hash=abc", "get", "", "", "", ""),
    ("GET", "/healthz", "get", "", "", "", ""),
    ("HEAD", "/healthz", "head", "", "", "", ""),
    ("POST", "/healthz", "post", "", "", "", ""),
    ("GET", "/", "get", "", "", "", ""),
    ("GET", "", "get", "", "", "", ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "target", "verb", "resource", "namespace", "name", "group"), CASES
)
def test_reads_like_kube_apiserver(
    method: str, target: str, verb: str, resource: str, namespace: str, name: str, group: str
) -> None:
    info = request_info(method, target)
    assert (info.verb, info.resource, info.namespace, info.name, info.api_group) == (
        verb,
        resource,
        namespace,
        name,
        group,
    )


@pytest.mark.parametrize(
    "target",
    [
        "/api/v1/namespaces/ns/pods",
        "/api/v1/namespaces/ns/pods/web-0",
        "/api/v1/namespaces/ns/pods/web-0/log",
        "/api/v1/namespaces/ns/pods/web-0/log?follow=false",
        "/api/v1/namespaces/ns/pods/web-0/log?follow=0",
        "/api/v1/namespaces/ns/pods?watch=false",
        "/api/v1/namespaces/ns/pods/web-0?watch=true",
        "/apis/apps/v1/namespaces/ns/deployments/web/scale",
        "/version",
        "/apis",
    ],
)
def test_short_requests_are_not_long_running(target: str) -> None:
    assert not request_info("GET", target).long_running


@pytest.mark.parametrize(
    "target",
    [
        "/api/v1/namespaces/ns/pods?watch=true",
        "/api/v1/namespaces/ns/pods?watch=1",
        "/api/v1/watch/namespaces/ns/pods",
        "/api/v1/namespaces/ns/pods/web-0/log?follow=true",
        "/api/v1/namespaces/ns/pods/web-0/log?container=c&follow=1&tailLines=10",
    ],
)
def test_watches_and_followed_logs_are_long_running(target: str) -> None:
    assert request_info("GET", target).long_running


def test_followed_log_is_a_get() -> None:
    info = request_info("GET", "/api/v1/namespaces/ns/pods/web-0/log?follow=true")
    assert info == RequestInfo(
        verb="get", resource="pods/log", namespace="ns", name="web-0", long_running=True
    )


@pytest.mark.parametrize(
    ("method", "target", "resource"),
    [
        ("POST", "/api/v1/namespaces/ns/pods/web-0/exec?command=sh&stdin=true", "pods/exec"),
        ("GET", "/api/v1/namespaces/ns/pods/web-0/exec?command=sh", "pods/exec"),
        ("POST", "/api/v1/namespaces/ns/pods/web-0/attach", "pods/attach"),
        ("GET", "/api/v1/namespaces/ns/pods/web-0/portforward", "pods/portforward"),
    ],
)
def test_upgrades_are_connects(method: str, target: str, resource: str) -> None:
    info = request_info(method, target, upgrade=True)
    assert info == RequestInfo(
        verb="connect", resource=resource, namespace="ns", name="web-0", long_running=True
    )


def test_upgrade_outside_the_api_is_a_connect() -> None:
    info = request_info("GET", "/somewhere", upgrade=True)
    assert (info.verb, info.long_running) == ("connect", True)


def test_exec_without_upgrade_is_a_plain_create() -> None:
    info = request_info("POST", "/api/v1/namespaces/ns/pods/web-0/exec")
    assert (info.verb, info.resource, info.long_running) == ("create", "pods/exec", False)


_methods = st.one_of(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get"]),
    st.from_regex(r"[A-Za-z]{1,10}", fullmatch=True),
)
_segment = st.one_of(
    st.sampled_from(["api", "apis", "v1", "namespaces", "watch", "pods", "log", "status", ""]),
    st.text(max_size=8),
)
_targets = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda segs, query: "/" + "/".join(segs) + query,
        st.lists(_segment, max_size=9),
        st.one_of(
            st.just(""),
            st.text(max_size=30).map(lambda q: "?" + q),
            st.sampled_from(
                ["?watch=true", "?follow=1", "?fieldSelector=metadata.name%3D", "?watch&&="]
            ),
        ),
    ),
)


@given(method=_methods, target=_targets, upgrade=st.booleans())
def test_never_raises_and_always_has_a_verb(method: str, target: str, upgrade: bool) -> None:
    info = request_info(method, target, upgrade)
    assert info.verb
    assert "/" not in info.namespace
    assert info.resource.count("/") <= 1
    if upgrade:
        assert (info.verb, info.long_running) == ("connect", True)

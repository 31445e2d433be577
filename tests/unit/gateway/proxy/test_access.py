from __future__ import annotations

import pytest

from gateway.proxy.access import is_allowed
from gateway.proxy.paths import split_cluster_path


@pytest.mark.parametrize("role", ["cluster-owner", "cluster-member"])
def test_writers_are_passed_through(role: str) -> None:
    assert is_allowed(role, "DELETE", "/api/v1/namespaces/x")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/v1/pods", True),
        ("HEAD", "/api", True),
        ("GET", "/api/v1/namespaces/d/pods/p/log", True),
        ("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", True),
        ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", True),
        ("POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", True),
        ("POST", "/api/v1/namespaces/d/configmaps", False),
        ("PATCH", "/api/v1/namespaces/d/configmaps/x", False),
        ("DELETE", "/api/v1/namespaces/d/configmaps/x", False),
        ("GET", "/api/v1/namespaces/d/pods/p/exec", False),
        ("POST", "/api/v1/namespaces/d/pods/p/exec", False),
        ("GET", "/api/v1/namespaces/d/pods/p/portforward", False),
        ("GET", "/api/v1/namespaces/d/services/s/proxy/x", False),
        ("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", False),
    ],
)
def test_read_only(method: str, path: str, allowed: bool) -> None:
    assert is_allowed("read-only", method, path) is allowed


@pytest.mark.parametrize(
    "raw",
    [
        "/k8s/clusters/c-1/api/v1/namespaces/d/pods/p/ex%65c?command=sh",
        "/k8s/clusters/c-1/api/v1/namespaces/d/pods/p/%65%78%65%63",
        "/k8s/clusters/c-1/api/v1/namespaces/d/pods/p/att%61ch",
        "/k8s/clusters/c-1/api/v1/namespaces/d/pods/p/port%66orward",
        "/k8s/clusters/c-1/api/v1/namespaces/d/services/s/pr%6fxy/",
        "/k8s/clusters/c-1/api/v1/namespaces/d/services/s/pr%6Fxy",
        "/k8s/clusters/c-1/api/v1/namespaces/d/pods/p/exec/",
    ],
)
def test_read_only_is_decided_on_the_decoded_path(raw: str) -> None:
    """Every spelling of an active subresource is one the read-only role is refused;
    '#' and other ambiguous spellings never get this far (gateway.proxy.paths refuses them)."""
    assert not is_allowed("read-only", "GET", split_cluster_path(raw).path)

from __future__ import annotations

import pytest

from gateway.access import is_allowed


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

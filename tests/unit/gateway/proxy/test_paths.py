"""Proxy path parsing: no spelling of a path escapes its cluster."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.proxy.paths import BadPath, split_cluster_path


def test_split_keeps_the_query_and_encoding() -> None:
    p = split_cluster_path("/k8s/clusters/c-abc12/api/v1/pods?labelSelector=a%3Db&watch=1")
    assert (p.cluster_id, p.target) == ("c-abc12", "/api/v1/pods?labelSelector=a%3Db&watch=1")


def test_cluster_root() -> None:
    assert split_cluster_path("/k8s/clusters/c-1").target == "/"
    assert split_cluster_path("/k8s/clusters/c-1/").target == "/"
    assert split_cluster_path("/k8s/clusters/c-1/api/").target == "/api/"


@pytest.mark.parametrize(
    "path",
    [
        "/k8s/clusters/",
        "/k8s/clusters/C-UPPER/api",
        "/k8s/clusters/c-1%2F..%2Fc-2/api",
        "/k8s/clusters/../v3/users",
        "/k8s/clusters/c-1/api/../../c-2/api",
        "/k8s/clusters/c-1/%2e%2e/c-2",
        "/k8s/clusters/c-1/api/%2E/v1",
        "/k8s/clusters/c-1//api",
        "/k8s/clusters/c-1/api\\..\\x",
        "/k8s/clusters/c-1/api/%5c",
        "/k8s/clusters/c-1/api/v1/namespaces%2Fx",
        "/v3/users",
    ],
)
def test_tricks_are_refused(path: str) -> None:
    with pytest.raises(BadPath):
        split_cluster_path(path)


segment = st.text(alphabet=st.sampled_from(list("abc.%2fF5Ee/\\")), min_size=0, max_size=12)


@given(cluster=st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), rest=segment, query=segment)
def test_accepted_targets_have_no_dot_or_empty_segments(
    cluster: str, rest: str, query: str
) -> None:
    try:
        parsed = split_cluster_path(f"/k8s/clusters/{cluster}/{rest}?{query}")
    except BadPath:
        return
    assert parsed.cluster_id == cluster
    path = parsed.target.partition("?")[0]
    segments = [unquote(s) for s in path.split("/")[1:]]
    assert "." not in segments and ".." not in segments
    assert "" not in segments[:-1]
    assert "%2f" not in path.lower()


@pytest.mark.parametrize(
    ("raw", "target", "path"),
    [
        # Encoded letters are decoded: the access check and the API server read "exec".
        ("/k8s/clusters/c-1/api/v1/namespaces/d/pods/p/ex%65c", "/api/v1/namespaces/d/pods/p/exec",
         "/api/v1/namespaces/d/pods/p/exec"),
        ("/k8s/clusters/c-1/api/v1/namespaces/d/pods/p/port%66orward?ports=80",
         "/api/v1/namespaces/d/pods/p/portforward?ports=80",
         "/api/v1/namespaces/d/pods/p/portforward"),
        ("/k8s/clusters/c-1/api/v1/namespaces/d/services/s/pr%6Fxy/",
         "/api/v1/namespaces/d/services/s/proxy/", "/api/v1/namespaces/d/services/s/proxy/"),
        # A double-encoded slash is a literal "%2F" in the name: encoded once again.
        ("/k8s/clusters/c-1/api/v1/namespaces/a%252Fb", "/api/v1/namespaces/a%252Fb",
         "/api/v1/namespaces/a%2Fb"),
        # Characters that need no escape are forwarded unescaped; others stay escaped.
        ("/k8s/clusters/c-1/api/x%3Ay%20z", "/api/x:y%20z", "/api/x:y z"),
        ("/k8s/clusters/c-1/api/%C3%A9", "/api/%C3%A9", "/api/\xc3\xa9"),
        # The query is passed on as it came.
        ("/k8s/clusters/c-1/api/v%31?fieldSelector=a%3Db", "/api/v1?fieldSelector=a%3Db",
         "/api/v1"),
    ],
)  # fmt: skip
def test_the_path_is_decoded_once_and_forwarded_canonically(
    raw: str, target: str, path: str
) -> None:
    parsed = split_cluster_path(raw)
    assert (parsed.target, parsed.path) == (target, path)


@pytest.mark.parametrize(
    "raw",
    [
        "/k8s/clusters/c-1/api/v1/pods#x",
        "/k8s/clusters/c-1/api/v1/namespaces/d/pods/p/proxy#x",
        "/k8s/clusters/c-1/api/v1/pods?x=1#frag",
        "/k8s/clusters/c-1/api/v1/pods%00",
        "/k8s/clusters/c-1/api/v1/pods%0d%0aImpersonate-User:%20x",
        "/k8s/clusters/c-1/api/v1/pods\r\nImpersonate-User: x",
        "/k8s/clusters/c-1/api/v1/pods HTTP/1.1",
        "/k8s/clusters/c-1/api/v1/pods?x=\x00",
        "/k8s/clusters/c-1/api/v1/p\xe9",
        "/k8s/clusters/c-1/api/v1/pods%",
        "/k8s/clusters/c-1/api/v1/pods%zz",
        "/k8s/clusters/c-1/api/v1/pods%2",
        "/k8s/clusters/c-1/api/%2e%2e/%2e%2e/v3",
        "/k8s/clusters/c-1/api/.%2e/x",
        "/k8s/clusters/c-1/api/v1//pods",
        "/k8s/clusters/c-1/api/v1/namespaces/d/pods/p/ex%5cec",
        "/k8s/clusters/c-1./api",
        "/k8s/clusters/C-1/api",
        "/k8s/clusters/c-1%2f..%2fc-2/api",
        "/k8s/clusters/c-%31/api",
    ],
)
def test_targets_that_could_be_read_two_ways_are_refused(raw: str) -> None:
    with pytest.raises(BadPath):
        split_cluster_path(raw)


raw_segments = st.lists(
    st.text(alphabet=st.sampled_from(list("aZ09-._~:@!$&'()*+,;=%25eE2fF0dD ")), max_size=8),
    min_size=1,
    max_size=5,
).map("/".join)


@given(cluster=st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), rest=raw_segments)
def test_what_is_forwarded_decodes_to_what_was_authorised(cluster: str, rest: str) -> None:
    """The API server decodes the forwarded path once (Go's URL.Path): it must read the
    path the access check read, and normalising it again changes nothing."""
    try:
        parsed = split_cluster_path(f"/k8s/clusters/{cluster}/{rest}")
    except BadPath:
        return
    assert unquote(parsed.target, encoding="latin-1") == parsed.path
    again = split_cluster_path(f"/k8s/clusters/{cluster}{parsed.target}")
    assert (again.target, again.path) == (parsed.target, parsed.path)
    segments = parsed.path.split("/")[1:]
    assert "." not in segments and ".." not in segments
    assert "" not in segments[:-1]
    assert not any(c in parsed.path for c in "\\\x00\r\n#")

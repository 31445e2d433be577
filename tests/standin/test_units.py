"""Small pieces of the stand-in on their own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from standin import patch, protobuf, selectors
from standin.auth import TokenFile, UserInfo, bearer_token, parse_duration
from standin.impersonation import Impersonator, PlainInternalError, _Request
from standin.requestinfo import request_info
from standin.status import ApiError
from standin.tables import human_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1), ("2m", 120), ("1h30m", 5400), ("500ms", 0.5), ("0", 0), ("1.5s", 1.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("5 minutes")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (119, "119s"),
        (150, "2m30s"),
        (600, "10m"),
        (3 * 3600 + 60, "3h1m"),
        (10 * 3600, "10h"),
        (3 * 86400 + 3600, "3d1h"),
        (30 * 86400, "30d"),
    ],
)
def test_human_duration(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def test_token_file(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('t1,alice,u1,"g1,g2"\nt2,bob,u2\n\n')
    tokens = TokenFile(path)
    assert tokens.lookup("t1") == UserInfo("alice", "u1", ("g1", "g2"))
    assert tokens.lookup("t2") == UserInfo("bob", "u2", ())
    assert tokens.lookup("nope") is None
    assert bearer_token("bearer  x") is None  # empty token after the first space
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("Basic abc") is None


def _headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_impersonation_rules() -> None:
    imp = Impersonator(users=("carol",), groups=("system:masters",))
    admin = UserInfo("admin", "", ("system:masters",))
    got = imp.impersonate(
        admin,
        _headers(
            ("Impersonate-User", "system:anonymous"),
            ("Impersonate-Extra-A%2Fb", "1"),
            ("Impersonate-Extra-a%2fb", "2"),
        ),
    )
    assert got == UserInfo("system:anonymous", "", ("system:unauthenticated",), {"a/b": ("1", "2")})
    got = imp.impersonate(
        UserInfo("carol"),
        _headers(("Impersonate-User", "x"), ("Impersonate-Group", "system:unauthenticated")),
    )
    assert got is not None
    assert got.groups == ("system:unauthenticated",)
    assert imp.impersonate(admin, _headers(("Accept", "x"))) is None
    with pytest.raises(PlainInternalError, match=r"requested \[\{UID  u1  authentication"):
        imp.impersonate(admin, _headers(("Impersonate-Uid", "u1")))
    with pytest.raises(ApiError) as err:
        imp.impersonate(
            UserInfo("mallory"), _headers(("Impersonate-User", "x"), ("Impersonate-Group", "g"))
        )
    assert err.value.code == 403
    assert err.value.message.startswith('users "x" is forbidden')


def test_impersonation_denied_extra_wording() -> None:
    """The 403 for an extra names the `userextras/<key>` subresource (checked after the user)."""
    denied = Impersonator()._deny(
        UserInfo("mallory"),
        _Request("UserExtra", "red", api_version="authentication.k8s.io/v1", field_path="team"),
    )
    assert denied.message == (
        'userextras.authentication.k8s.io "red" is forbidden: User "mallory" cannot impersonate '
        'resource "userextras/team" in API group "authentication.k8s.io" at the cluster scope'
    )
    assert denied.details == {"name": "red", "group": "authentication.k8s.io", "kind": "userextras"}


def test_label_selectors() -> None:
    obj = {"metadata": {"labels": {"app": "web", "tier": "front", "n": "5"}}}
    assert selectors.parse_label_selector("app=web,tier in (front, back)")(obj)
    assert selectors.parse_label_selector("app==web,!missing")(obj)
    assert not selectors.parse_label_selector("app!=web")(obj)
    assert not selectors.parse_label_selector("tier notin (front)")(obj)
    assert selectors.parse_label_selector("n>4")(obj)
    assert not selectors.parse_label_selector("missing")(obj)
    with pytest.raises(ApiError):
        selectors.parse_label_selector("a=(")


def test_request_info() -> None:
    info = request_info("GET", "/api/v1/namespaces/ns/pods/p/log", {})
    assert (info.verb, info.namespace, info.resource, info.name, info.subresource) == (
        "get",
        "ns",
        "pods",
        "p",
        "log",
    )
    info = request_info("GET", "/apis/apps/v1/watch/namespaces/ns/deployments", {})
    assert (info.verb, info.group, info.resource) == ("watch", "apps", "deployments")
    info = request_info("DELETE", "/api/v1/namespaces/ns/configmaps", {})
    assert info.verb == "deletecollection"
    info = request_info("GET", "/api/v1/namespaces/ns", {})
    assert (info.resource, info.name, info.namespace) == ("namespaces", "ns", "ns")
    assert not request_info("GET", "/version", {}).is_resource


def test_merge_and_json_patch() -> None:
    doc = {"a": {"b": 1, "c": 2}, "l": [1, 2]}
    assert patch.merge_patch(doc, {"a": {"b": None, "d": 3}, "l": [3]}) == {
        "a": {"c": 2, "d": 3},
        "l": [3],
    }
    assert patch.json_patch(doc, [{"op": "add", "path": "/l/-", "value": 9}])["l"] == [1, 2, 9]
    assert patch.json_patch(doc, [{"op": "move", "from": "/a/b", "path": "/x"}]) == {
        "a": {"c": 2},
        "l": [1, 2],
        "x": 1,
    }


def test_strategic_merge_directives() -> None:
    live = {"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}}
    smp = {
        "spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "$patch": "delete"}, {"name": "c", "image": "2"}],
        }
    }
    assert patch.strategic_merge_patch(live, smp) == {
        "spec": {"containers": [{"name": "b", "image": "1"}, {"name": "c", "image": "2"}]}
    }


def test_protobuf_round_trip() -> None:
    obj: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "ns", "labels": {"app": "d"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "d"}},
            "template": {
                "metadata": {"labels": {"app": "d"}},
                "spec": {
                    "containers": [
                        {
                            "name": "c",
                            "image": "nginx",
                            "ports": [{"containerPort": 80}],
                            "resources": {"limits": {"cpu": "500m"}},
                            "env": [
                                {
                                    "name": "K",
                                    "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}},
                                }
                            ],
                        }
                    ]
                },
            },
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
        },
    }
    decoded = protobuf.decode_object(protobuf.encode_object(obj))
    assert decoded["spec"]["replicas"] == 0  # a pointer field keeps its zero
    assert decoded["spec"]["template"]["spec"]["containers"][0]["env"][0] == {
        "name": "K",
        "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}},
    }
    assert decoded["spec"]["strategy"] == obj["spec"]["strategy"]
    assert decoded["metadata"] == obj["metadata"]


def test_protobuf_unknown_kind_is_415() -> None:
    raw = protobuf.MAGIC + protobuf.length_delimited(
        1, protobuf.length_delimited(1, b"batch/v1") + protobuf.length_delimited(2, b"Job")
    )
    with pytest.raises(ApiError) as err:
        protobuf.decode_object(raw)
    assert err.value.code == 415

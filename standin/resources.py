"""The resource types the stand-in serves: built-ins plus whatever CRDs declare."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

STANDARD_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
CREATE_ONLY = ("create",)


@dataclass(frozen=True)
class Subresource:
    name: str
    kind: str
    verbs: tuple[str, ...]
    group: str = ""
    version: str = ""


@dataclass
class ResourceType:
    group: str
    version: str
    resource: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = STANDARD_VERBS
    subresources: tuple[Subresource, ...] = ()
    # Field selectors the real server accepts besides metadata.name / metadata.namespace.
    field_labels: tuple[str, ...] = ()
    crd: str = ""  # name of the CRD that serves it
    printer_columns: list[dict[str, Any]] = field(default_factory=list)
    storage_version: str = ""
    # scale subresource: specReplicasPath, statusReplicasPath, labelSelectorPath (JSON paths)
    scale_paths: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.singular:
            self.singular = self.kind.lower()
        if not self.storage_version:
            self.storage_version = self.version

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def storage_key(self) -> tuple[str, str]:
        return (self.group, self.resource)

    def subresource(self, name: str) -> Subresource | None:
        for sub in self.subresources:
            if sub.name == name:
                return sub
        return None

    def has_status(self) -> bool:
        return self.subresource("status") is not None

    def storage_version_hash(self) -> str:
        digest = hashlib.sha256(f"{self.group}/{self.storage_version}/{self.kind}".encode())
        return base64.b64encode(digest.digest()[:8]).decode()

    def discovery_entries(self) -> list[dict[str, Any]]:
        entry: dict[str, Any] = {
            "name": self.resource,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        if "list" in self.verbs:
            entry["storageVersionHash"] = self.storage_version_hash()
        out = [entry]
        for sub in self.subresources:
            item: dict[str, Any] = {
                "name": f"{self.resource}/{sub.name}",
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": sub.kind,
                "verbs": list(sub.verbs),
            }
            if sub.group:
                item["group"] = sub.group
            if sub.version:
                item["version"] = sub.version
            out.append(item)
        return out


_STATUS_VERBS = ("get", "patch", "update")


def _status(kind: str) -> Subresource:
    return Subresource("status", kind, _STATUS_VERBS)


def builtin_types() -> list[ResourceType]:
    core = [
        ResourceType(
            "",
            "v1",
            "namespaces",
            "Namespace",
            False,
            short_names=("ns",),
            verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
            subresources=(
                Subresource("finalize", "Namespace", ("update",)),
                _status("Namespace"),
            ),
            field_labels=("status.phase",),
        ),
        ResourceType("", "v1", "configmaps", "ConfigMap", True, short_names=("cm",)),
        ResourceType(
            "", "v1", "endpoints", "Endpoints", True, singular="endpoints", short_names=("ep",)
        ),
        ResourceType(
            "",
            "v1",
            "events",
            "Event",
            True,
            short_names=("ev",),
            field_labels=(
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ),
        ),
        ResourceType("", "v1", "limitranges", "LimitRange", True, short_names=("limits",)),
        ResourceType(
            "",
            "v1",
            "nodes",
            "Node",
            False,
            short_names=("no",),
            subresources=(
                Subresource(
                    "proxy", "NodeProxyOptions", ("create", "delete", "get", "patch", "update")
                ),
                _status("Node"),
            ),
            field_labels=("spec.unschedulable",),
        ),
        ResourceType(
            "",
            "v1",
            "pods",
            "Pod",
            True,
            short_names=("po",),
            categories=("all",),
            subresources=(
                Subresource("attach", "PodAttachOptions", ("create", "get")),
                Subresource("binding", "Binding", ("create",)),
                Subresource("ephemeralcontainers", "Pod", _STATUS_VERBS),
                Subresource("eviction", "Eviction", ("create",), group="policy", version="v1"),
                Subresource("exec", "PodExecOptions", ("create", "get")),
                Subresource("log", "Pod", ("get",)),
                Subresource("portforward", "PodPortForwardOptions", ("create", "get")),
                Subresource(
                    "proxy", "PodProxyOptions", ("create", "delete", "get", "patch", "update")
                ),
                _status("Pod"),
            ),
            field_labels=(
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.podIPs",
                "status.nominatedNodeName",
            ),
        ),
        ResourceType(
            "",
            "v1",
            "resourcequotas",
            "ResourceQuota",
            True,
            short_names=("quota",),
            subresources=(_status("ResourceQuota"),),
        ),
        ResourceType("", "v1", "secrets", "Secret", True, field_labels=("type",)),
        ResourceType(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            True,
            short_names=("sa",),
            subresources=(
                Subresource(
                    "token",
                    "TokenRequest",
                    ("create",),
                    group="authentication.k8s.io",
                    version="v1",
                ),
            ),
        ),
        ResourceType(
            "",
            "v1",
            "services",
            "Service",
            True,
            short_names=("svc",),
            categories=("all",),
            verbs=(
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ),
            subresources=(
                Subresource(
                    "proxy", "ServiceProxyOptions", ("create", "delete", "get", "patch", "update")
                ),
                _status("Service"),
            ),
        ),
    ]
    apps = [
        ResourceType(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            True,
            short_names=("deploy",),
            categories=("all",),
            subresources=(
                Subresource("scale", "Scale", _STATUS_VERBS, group="autoscaling", version="v1"),
                _status("Deployment"),
            ),
        ),
        ResourceType(
            "apps",
            "v1",
            "replicasets",
            "ReplicaSet",
            True,
            short_names=("rs",),
            categories=("all",),
            subresources=(
                Subresource("scale", "Scale", _STATUS_VERBS, group="autoscaling", version="v1"),
                _status("ReplicaSet"),
            ),
        ),
        ResourceType(
            "apps",
            "v1",
            "statefulsets",
            "StatefulSet",
            True,
            short_names=("sts",),
            categories=("all",),
            subresources=(
                Subresource("scale", "Scale", _STATUS_VERBS, group="autoscaling", version="v1"),
                _status("StatefulSet"),
            ),
        ),
        ResourceType(
            "apps",
            "v1",
            "daemonsets",
            "DaemonSet",
            True,
            short_names=("ds",),
            categories=("all",),
            subresources=(_status("DaemonSet"),),
        ),
    ]
    reviews: list[ResourceType] = [
        ResourceType(
            "authentication.k8s.io",
            version,
            "selfsubjectreviews",
            "SelfSubjectReview",
            False,
            verbs=CREATE_ONLY,
        )
        for version in ("v1", "v1beta1", "v1alpha1")
    ]
    reviews.append(
        ResourceType(
            "authentication.k8s.io", "v1", "tokenreviews", "TokenReview", False, verbs=CREATE_ONLY
        )
    )
    for name, kind, namespaced in (
        ("localsubjectaccessreviews", "LocalSubjectAccessReview", True),
        ("selfsubjectaccessreviews", "SelfSubjectAccessReview", False),
        ("selfsubjectrulesreviews", "SelfSubjectRulesReview", False),
        ("subjectaccessreviews", "SubjectAccessReview", False),
    ):
        reviews.append(
            ResourceType("authorization.k8s.io", "v1", name, kind, namespaced, verbs=CREATE_ONLY)
        )
    rbac = [
        ResourceType("rbac.authorization.k8s.io", "v1", resource, kind, namespaced)
        for resource, kind, namespaced in (
            ("clusterrolebindings", "ClusterRoleBinding", False),
            ("clusterroles", "ClusterRole", False),
            ("rolebindings", "RoleBinding", True),
            ("roles", "Role", True),
        )
    ]
    crd = ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        short_names=("crd", "crds"),
        categories=("api-extensions",),
        subresources=(_status("CustomResourceDefinition"),),
    )
    return [*core, *apps, *reviews, *rbac, crd]


# Groups in the order /apis lists them; CRD groups follow.
BUILTIN_GROUP_ORDER = (
    "apps",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "rbac.authorization.k8s.io",
    "apiextensions.k8s.io",
)


class Registry:
    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._group_versions: dict[str, list[str]] = {}
        for rt in builtin_types():
            self.add(rt)

    def add(self, rt: ResourceType) -> None:
        self._types[(rt.group, rt.version, rt.resource)] = rt
        versions = self._group_versions.setdefault(rt.group, [])
        if rt.version not in versions:
            versions.append(rt.version)

    def remove_crd(self, crd_name: str) -> None:
        for key in [k for k, v in self._types.items() if v.crd == crd_name]:
            del self._types[key]
        self._group_versions.clear()
        for rt in self._types.values():
            versions = self._group_versions.setdefault(rt.group, [])
            if rt.version not in versions:
                versions.append(rt.version)

    def set_group_versions(self, group: str, versions: list[str]) -> None:
        """Order a CRD group's versions (preferred first)."""
        present = self._group_versions.get(group, [])
        self._group_versions[group] = [v for v in versions if v in present] + [
            v for v in present if v not in versions
        ]

    def get(self, group: str, version: str, resource: str) -> ResourceType | None:
        return self._types.get((group, version, resource))

    def by_kind(self, group: str, kind: str) -> ResourceType | None:
        for rt in self._types.values():
            if rt.group == group and rt.kind == kind:
                return rt
        return None

    def groups(self) -> list[str]:
        """Non-core groups in discovery order."""
        names = [g for g in self._group_versions if g]
        builtin = [g for g in BUILTIN_GROUP_ORDER if g in names]
        return builtin + sorted(g for g in names if g not in BUILTIN_GROUP_ORDER)

    def versions(self, group: str) -> list[str]:
        return list(self._group_versions.get(group, []))

    def types_in(self, group: str, version: str) -> list[ResourceType]:
        return [rt for (g, v, _), rt in self._types.items() if g == group and v == version]

    def all_types(self) -> list[ResourceType]:
        return list(self._types.values())

"""CustomResourceDefinitions: validation, status, and the resource types they serve."""

from __future__ import annotations

import re
from typing import Any

from .builtins import _cause, now_rfc3339
from .resources import STANDARD_VERBS, ResourceType, Subresource
from .status import invalid


def validate_crd(crd: dict[str, Any]) -> None:
    meta = crd.get("metadata") or {}
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    name = meta.get("name", "")
    causes = []
    group = spec.get("group", "")
    plural = names.get("plural", "")
    if not group:
        causes.append(_cause("FieldValueRequired", "spec.group", ""))
    if not plural:
        causes.append(_cause("FieldValueRequired", "spec.names.plural", ""))
    if not names.get("kind"):
        causes.append(_cause("FieldValueRequired", "spec.names.kind", ""))
    if plural and group and name != f"{plural}.{group}":
        causes.append(
            _cause(
                "FieldValueInvalid",
                "metadata.name",
                'must be spec.names.plural+"."+spec.group',
                name,
            )
        )
    scope = spec.get("scope", "")
    if scope not in ("Namespaced", "Cluster"):
        causes.append(
            _cause(
                "FieldValueNotSupported" if scope else "FieldValueRequired",
                "spec.scope",
                'supported values: "Cluster", "Namespaced"' if scope else "",
                scope,
            )
        )
    versions = spec.get("versions") or []
    if not versions:
        causes.append(
            _cause(
                "FieldValueInvalid",
                "spec.versions",
                "must have exactly one version marked as storage version",
                versions,
            )
        )
    elif sum(1 for v in versions if v.get("storage")) != 1:
        causes.append(
            _cause(
                "FieldValueInvalid",
                "spec.versions",
                "must have exactly one version marked as storage version",
                [v.get("name") for v in versions],
            )
        )
    if causes:
        raise invalid("apiextensions.k8s.io", "CustomResourceDefinition", name, causes)


def crd_defaults(crd: dict[str, Any]) -> None:
    spec = crd.setdefault("spec", {})
    names = spec.setdefault("names", {})
    names.setdefault("singular", (names.get("kind") or "").lower())
    names.setdefault("listKind", f"{names.get('kind', '')}List")
    for version in spec.get("versions") or []:
        version.setdefault("served", True)
    spec.setdefault("conversion", {"strategy": "None"})
    storage = next((v["name"] for v in spec.get("versions") or [] if v.get("storage")), "")
    now = now_rfc3339()
    accepted = dict(names)
    crd["status"] = {
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "lastTransitionTime": now,
                "reason": "NoConflicts",
                "message": "no conflicts found",
            },
            {
                "type": "Established",
                "status": "True",
                "lastTransitionTime": now,
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
            },
        ],
        "acceptedNames": accepted,
        "storedVersions": [storage] if storage else [],
    }


def served_types(crd: dict[str, Any]) -> list[ResourceType]:
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    storage = next((v["name"] for v in spec.get("versions") or [] if v.get("storage")), "")
    types = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subs: list[Subresource] = []
        subresources = version.get("subresources") or spec.get("subresources") or {}
        if "status" in subresources:
            subs.append(Subresource("status", names.get("kind", ""), ("get", "patch", "update")))
        if "scale" in subresources:
            subs.append(
                Subresource("scale", "Scale", ("get", "patch", "update"), "autoscaling", "v1")
            )
        selectable = tuple(
            f.get("jsonPath", "").lstrip(".") for f in version.get("selectableFields") or []
        )
        types.append(
            ResourceType(
                spec.get("group", ""),
                version.get("name", ""),
                names.get("plural", ""),
                names.get("kind", ""),
                spec.get("scope") == "Namespaced",
                singular=names.get("singular", ""),
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                verbs=STANDARD_VERBS,
                subresources=tuple(subs),
                field_labels=selectable,
                crd=(crd.get("metadata") or {}).get("name", ""),
                printer_columns=list(
                    version.get("additionalPrinterColumns")
                    or spec.get("additionalPrinterColumns")
                    or []
                ),
                storage_version=storage,
                scale_paths=dict(subresources.get("scale") or {}),
            )
        )
    return types


def version_priority(version: str) -> tuple[int, int, int]:
    """Kube-aware version ordering: GA > beta > alpha, then by numbers (higher first)."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not m:
        return (3, 0, 0)
    major = int(m.group(1))
    if m.group(2) is None:
        return (0, -major, 0)
    level = 1 if m.group(2) == "beta" else 2
    return (level, -major, -int(m.group(3)))

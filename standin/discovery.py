"""Discovery documents.

- Legacy: /api (APIVersions), /api/v1 and /apis/<group>/<version> (APIResourceList), /apis
  (APIGroupList), /apis/<group> (APIGroup).
- Aggregated (`apidiscovery.k8s.io` v2 and v2beta1 `APIGroupDiscoveryList`) at /api and /apis
  when the Accept header asks for it, as kubectl 1.26+ does. client-go recognises the answer by
  its Content-Type (`application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`);
  any other Content-Type makes it fall back to the legacy per-group-version requests. The
  stand-in can be told to serve only legacy discovery (`--aggregated-discovery=false`).
"""

from __future__ import annotations

from typing import Any

from .resources import Registry, ResourceType


def _gv(group: str, version: str) -> dict[str, str]:
    return {"groupVersion": f"{group}/{version}" if group else version, "version": version}


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def api_group(registry: Registry, group: str) -> dict[str, Any] | None:
    versions = registry.versions(group)
    if not versions:
        return None
    return {
        "name": group,
        "versions": [_gv(group, v) for v in versions],
        "preferredVersion": _gv(group, versions[0]),
    }


def api_group_list(registry: Registry) -> dict[str, Any]:
    groups = [api_group(registry, g) for g in registry.groups()]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [g for g in groups if g]}


def api_group_doc(registry: Registry, group: str) -> dict[str, Any] | None:
    doc = api_group(registry, group)
    if doc is None:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **doc}


def api_resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = registry.types_in(group, version)
    if not types:
        return None
    resources: list[dict[str, Any]] = []
    for rt in sorted(types, key=lambda t: t.resource):
        resources.extend(rt.discovery_entries())
    doc: dict[str, Any] = {"kind": "APIResourceList"}
    if group:
        doc["apiVersion"] = "v1"
    doc["groupVersion"] = f"{group}/{version}" if group else version
    doc["resources"] = resources
    return doc


AGGREGATED_VERSIONS = ("v2", "v2beta1")


def aggregated_content_type(version: str) -> str:
    return f"application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"


def wants_aggregated(accept: str | None) -> str | None:
    """The aggregated discovery version the Accept header prefers, if any."""
    for raw in (accept or "").split(","):
        parts = [p.strip() for p in raw.split(";")]
        if parts[0] != "application/json":
            if parts[0] in ("*/*", "application/*"):
                return None
            continue
        params = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        if not params:
            return None
        if (
            params.get("g") == "apidiscovery.k8s.io"
            and params.get("as") == "APIGroupDiscoveryList"
            and params.get("v") in AGGREGATED_VERSIONS
        ):
            return params["v"]
    return None


def _discovery_resource(rt: ResourceType) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": rt.resource,
        "responseKind": {"group": "", "version": "", "kind": rt.kind},
        "scope": "Namespaced" if rt.namespaced else "Cluster",
        "singularResource": rt.singular,
        "verbs": list(rt.verbs),
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    if rt.subresources:
        entry["subresources"] = [
            {
                "subresource": sub.name,
                "responseKind": {"group": sub.group, "version": sub.version, "kind": sub.kind},
                "verbs": list(sub.verbs),
            }
            for sub in rt.subresources
        ]
    return entry


def aggregated(registry: Registry, *, core: bool, version: str) -> dict[str, Any]:
    groups = [""] if core else registry.groups()
    items = []
    for group in groups:
        versions = ["v1"] if core else registry.versions(group)
        items.append(
            {
                "metadata": {"name": group, "creationTimestamp": None},
                "versions": [
                    {
                        "version": v,
                        "resources": [
                            _discovery_resource(rt)
                            for rt in sorted(registry.types_in(group, v), key=lambda t: t.resource)
                        ],
                        "freshness": "Current",
                    }
                    for v in versions
                ],
            }
        )
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": f"apidiscovery.k8s.io/{version}",
        "metadata": {},
        "items": items,
    }

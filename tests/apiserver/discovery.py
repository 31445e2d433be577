"""Legacy discovery documents (/api, /api/v1, /apis, /apis/<group>[/<version>]).

Clients asking for aggregated discovery (`as=APIGroupDiscoveryList`) list that media type first
and `application/json` last; the stand-in answers with the legacy documents and
`Content-Type: application/json`, which client-go's discovery client takes as the signal to
fall back to per-group-version requests (discovery_client.go, `downloadAPIs`).
"""

from __future__ import annotations

from typing import Any

from .resources import Registry


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

"""A thin OpenAPI surface: enough for kubectl to see that the server validates fields.

kubectl (create/apply/replace, `--validate=strict` by default) asks `/openapi/v3`, then the
group-version document, and looks for a PATCH operation whose `x-kubernetes-group-version-kind`
is the object's kind and which lists a `fieldValidation` query parameter
(cli-runtime `queryParamVerifierV3`). When found, it leaves validation to the server and skips
client-side schema validation. For custom resources it checks the Namespace PATCH instead.

Strategic merge patch is deliberately not listed as a PATCH request body: kubectl's
client-side apply would then try to build the patch from OpenAPI schemas (which are not
served); without it, kubectl uses its compiled-in types. The schema-less `/openapi/v2`
document (below) makes kubectl fall back to those types as well.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .protobuf import length_delimited
from .resources import Registry, ResourceType


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _param(name: str, where: str = "query") -> dict[str, Any]:
    p: dict[str, Any] = {
        "name": name,
        "in": where,
        "schema": {"type": "string", "uniqueItems": True},
    }
    if where == "path":
        p["required"] = True
    return p


def _operation(rt: ResourceType, action: str, op_id: str, body_types: list[str]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "tags": [f"{rt.group or 'core'}_{rt.version}"],
        "operationId": op_id,
        "parameters": [_param("dryRun"), _param("fieldManager")]
        + ([_param("fieldValidation")] if action in ("post", "put", "patch") else []),
        "responses": {"200": {"description": "OK"}, "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {
            "group": rt.group,
            "version": rt.version,
            "kind": rt.kind,
        },
    }
    if body_types:
        op["requestBody"] = {
            "content": {t: {"schema": {"type": "object"}} for t in body_types},
            "required": True,
        }
    return op


def gv_document(
    registry: Registry, group: str, version: str, k8s_version: str
) -> dict[str, Any] | None:
    types = registry.types_in(group, version)
    if not types:
        return None
    base = f"/{_gv_path(group, version)}"
    paths: dict[str, Any] = {}
    for rt in types:
        op_base = f"{rt.kind}"
        prefix = f"{base}/namespaces/{{namespace}}" if rt.namespaced else base
        collection = f"{prefix}/{rt.resource}"
        item = f"{collection}/{{name}}"
        if "create" in rt.verbs:
            paths[collection] = {
                "post": _operation(rt, "post", f"create{op_base}", ["*/*"]),
            }
            if "list" in rt.verbs:
                paths[collection]["get"] = _operation(rt, "list", f"list{op_base}", [])
        if "get" in rt.verbs:
            paths[item] = {
                "get": _operation(rt, "get", f"read{op_base}", []),
                "put": _operation(rt, "put", f"replace{op_base}", ["*/*"]),
                "delete": _operation(rt, "delete", f"delete{op_base}", []),
                "patch": _operation(
                    rt,
                    "patch",
                    f"patch{op_base}",
                    [
                        "application/apply-patch+yaml",
                        "application/json-patch+json",
                        "application/merge-patch+json",
                    ],
                ),
            }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": k8s_version},
        "paths": paths,
        "components": {"schemas": {}},
    }


def _hash(doc: dict[str, Any]) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:128].upper()


def root_document(registry: Registry, k8s_version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    gvs = [("", "v1")] + [(g, v) for g in registry.groups() for v in registry.versions(g)]
    for group, version in gvs:
        doc = gv_document(registry, group, version, k8s_version)
        if doc is None:
            continue
        rel = _gv_path(group, version)
        paths[rel] = {"serverRelativeURL": f"/openapi/v3/{rel}?hash={_hash(doc)}"}
    return {"paths": paths}


# -- OpenAPI v2 ---------------------------------------------------------------------------------
#
# kubectl 1.27 and 1.28 fetch /openapi/v2 (as gnostic's `openapi.v2.Document` protobuf,
# `application/com.github.proto-openapi.spec.v2@v1.0+protobuf`) before create/apply and fails when
# it cannot. The document below has no schema definitions; each PATCH operation carries the
# `fieldValidation` query parameter and the `x-kubernetes-group-version-kind` extension, which
# is what cli-runtime's v2 `QueryParamVerifier` looks for.

V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
# What kube-openapi answers with: Go's mime parser rejects the "@" of the requested type.
V2_PROTOBUF_RETURNED = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _ld(num: int, payload: bytes) -> bytes:
    return length_delimited(num, payload)


def _v2_patch_path(rt: ResourceType) -> str:
    base = f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"
    if rt.namespaced:
        base += "/namespaces/{namespace}"
    return f"{base}/{rt.resource}/{{name}}"


def _v2_gvk_yaml(rt: ResourceType) -> str:
    return f'group: "{rt.group}"\nkind: {rt.kind}\nversion: {rt.version}\n'


def v2_document(registry: Registry, k8s_version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for rt in registry.all_types():
        if "patch" not in rt.verbs:
            continue
        paths[_v2_patch_path(rt)] = {
            "patch": {
                "operationId": f"patch{rt.kind}",
                "parameters": [
                    {
                        "uniqueItems": True,
                        "type": "string",
                        "name": "fieldValidation",
                        "in": "query",
                    }
                ],
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {
                    "group": rt.group,
                    "kind": rt.kind,
                    "version": rt.version,
                },
            }
        }
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": k8s_version},
        "paths": paths,
        "definitions": {},
    }


def v2_protobuf(registry: Registry, k8s_version: str) -> bytes:
    """The same document in gnostic's protobuf form (field numbers from OpenAPIv2.proto)."""
    path_items = b""
    for rt in registry.all_types():
        if "patch" not in rt.verbs:
            continue
        query = _ld(2, b"query") + _ld(4, b"fieldValidation") + _ld(6, b"string")
        parameter = _ld(2, _ld(3, query))  # Parameter.non_body_parameter.query_parameter_sub_schema
        params_item = _ld(1, parameter)  # ParametersItem.parameter
        gvk = _ld(1, b"x-kubernetes-group-version-kind") + _ld(
            2, _ld(2, _v2_gvk_yaml(rt).encode())
        )  # NamedAny{name, value: Any{yaml}}
        operation = _ld(5, f"patch{rt.kind}".encode()) + _ld(8, params_item) + _ld(13, gvk)
        path_item = _ld(8, operation)  # PathItem.patch
        path_items += _ld(2, _ld(1, _v2_patch_path(rt).encode()) + _ld(2, path_item))
    info = _ld(1, b"Kubernetes") + _ld(2, k8s_version.encode())
    return _ld(1, b"2.0") + _ld(2, info) + _ld(8, path_items)

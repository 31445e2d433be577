"""Subresources beyond status/log/exec: scale, eviction, binding, ephemeralcontainers."""

from __future__ import annotations

import copy
from typing import Any, Protocol

from aiohttp import web

from . import negotiation
from .context import Context
from .resources import ResourceType
from .status import MODIFIED, bad_request, conflict, status_response, success_status


class Api(Protocol):
    """What the subresources ask of the REST core (``standin.rest.Api``, which calls them)."""

    def lookup(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]: ...
    async def read_patch(self, ctx: Context, rt: ResourceType) -> tuple[str, Any]: ...
    def patched(self, ctype: str, current: dict[str, Any], doc: Any) -> dict[str, Any]: ...
    def update_object(
        self,
        rt: ResourceType,
        new: dict[str, Any],
        old: dict[str, Any],
        *,
        keep_status: bool = True,
    ) -> dict[str, Any]: ...
    def delete_object(
        self, rt: ResourceType, obj: dict[str, Any], opts: dict[str, Any]
    ) -> dict[str, Any]: ...
    def respond_object(
        self, ctx: Context, rt: ResourceType, obj: dict[str, Any], code: int = 200
    ) -> web.Response: ...


_DEFAULT_SCALE_PATHS = {
    "specReplicasPath": ".spec.replicas",
    "statusReplicasPath": ".status.replicas",
    "labelSelectorPath": "",
}


def _get_path(obj: Any, path: str) -> Any:
    cur = obj
    for part in path.strip(".").split("."):
        if not part:
            continue
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    parts = [p for p in path.strip(".").split(".") if p]
    cur = obj
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


def _selector_string(selector: Any) -> str:
    if not isinstance(selector, dict):
        return str(selector or "")
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        op = expr.get("operator", "")
        if op in ("In", "NotIn"):
            values = ",".join(expr.get("values") or [])
            parts.append(f"{expr.get('key')} {op.lower()} ({values})")
        elif op == "Exists":
            parts.append(str(expr.get("key")))
        elif op == "DoesNotExist":
            parts.append(f"!{expr.get('key')}")
    return ",".join(parts)


def scale_paths(rt: ResourceType) -> dict[str, str]:
    if rt.crd:
        return {**_DEFAULT_SCALE_PATHS, **rt.scale_paths}
    return {**_DEFAULT_SCALE_PATHS, "labelSelectorPath": ".spec.selector"}


def to_scale(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """The autoscaling/v1 Scale view of an object."""
    paths = scale_paths(rt)
    meta = obj.get("metadata") or {}
    status: dict[str, Any] = {"replicas": int(_get_path(obj, paths["statusReplicasPath"]) or 0)}
    if paths.get("labelSelectorPath"):
        selector = _selector_string(_get_path(obj, paths["labelSelectorPath"]))
        if selector:
            status["selector"] = selector
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": int(_get_path(obj, paths["specReplicasPath"]) or 0)},
        "status": status,
    }


async def serve_scale(api: Api, ctx: Context, rt: ResourceType, namespace: str) -> web.Response:
    name = ctx.info.name
    obj = api.lookup(rt, namespace, name)
    method = ctx.request.method
    target = negotiation.negotiate(ctx.request.headers.get("Accept"), is_list=False)
    if method == "GET":
        body, ctype = negotiation.encode(to_scale(rt, obj), target)
        return web.Response(body=body, headers={"Content-Type": ctype})
    current = to_scale(rt, obj)
    if method == "PUT":
        raw = await ctx.request.read()
        wanted = negotiation.decode_body(raw, ctx.request.headers.get("Content-Type"))
        rv = (wanted.get("metadata") or {}).get("resourceVersion")
        if rv and rv != current["metadata"].get("resourceVersion"):
            raise conflict(rt.group, rt.resource, name, MODIFIED)
    else:
        ctype, doc = await api.read_patch(ctx, rt)
        wanted = api.patched(ctype, current, doc)
    replicas = (wanted.get("spec") or {}).get("replicas")
    if not isinstance(replicas, int) or replicas < 0:
        raise bad_request(f"invalid replicas: {replicas!r}")
    updated = copy.deepcopy(obj)
    _set_path(updated, scale_paths(rt)["specReplicasPath"], replicas)
    stored = api.update_object(rt, updated, obj)
    body, ctype = negotiation.encode(to_scale(rt, stored), target)
    return web.Response(body=body, headers={"Content-Type": ctype})


async def serve_eviction(api: Api, ctx: Context, rt: ResourceType, namespace: str) -> web.Response:
    """policy/v1 Eviction: with no PodDisruptionBudgets, an eviction is a deletion."""
    pod = api.lookup(rt, namespace, ctx.info.name)
    raw = await ctx.request.read()
    body = negotiation.decode_body(raw, ctx.request.headers.get("Content-Type")) if raw else {}
    api.delete_object(rt, pod, body.get("deleteOptions") or {})
    return status_response(success_status(), 201)


async def serve_binding(api: Api, ctx: Context, rt: ResourceType, namespace: str) -> web.Response:
    pod = api.lookup(rt, namespace, ctx.info.name)
    raw = await ctx.request.read()
    body = negotiation.decode_body(raw, ctx.request.headers.get("Content-Type"))
    node = (body.get("target") or {}).get("name", "")
    if (pod.get("spec") or {}).get("nodeName"):
        raise conflict(
            rt.group, rt.resource, ctx.info.name, f"pod {ctx.info.name} is already assigned to node"
        )
    updated = copy.deepcopy(pod)
    updated.setdefault("spec", {})["nodeName"] = node
    api.update_object(rt, updated, pod)
    return status_response(success_status(), 201)


def _ephemeral_statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    started = (pod.get("metadata") or {}).get("creationTimestamp")
    return [
        {
            "name": c.get("name", ""),
            "image": c.get("image", ""),
            "imageID": "",
            "containerID": f"containerd://ephemeral-{c.get('name', '')}",
            "ready": False,
            "restartCount": 0,
            "state": {"running": {"startedAt": started}},
            "lastState": {},
        }
        for c in (pod.get("spec") or {}).get("ephemeralContainers") or []
    ]


async def serve_ephemeral(api: Api, ctx: Context, rt: ResourceType, namespace: str) -> web.Response:
    """pods/ephemeralcontainers (kubectl debug): only spec.ephemeralContainers may change."""
    pod = api.lookup(rt, namespace, ctx.info.name)
    method = ctx.request.method
    if method == "GET":
        return api.respond_object(ctx, rt, pod)
    if method == "PUT":
        raw = await ctx.request.read()
        wanted = negotiation.decode_body(raw, ctx.request.headers.get("Content-Type"))
    else:
        ctype, doc = await api.read_patch(ctx, rt)
        wanted = api.patched(ctype, pod, doc)
    updated = copy.deepcopy(pod)
    ephemeral = (wanted.get("spec") or {}).get("ephemeralContainers") or []
    for c in ephemeral:
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("imagePullPolicy", "IfNotPresent")
        c.setdefault("resources", {})
    updated.setdefault("spec", {})["ephemeralContainers"] = ephemeral
    updated.setdefault("status", {})["ephemeralContainerStatuses"] = _ephemeral_statuses(updated)
    stored = api.update_object(rt, updated, pod, keep_status=False)
    return api.respond_object(ctx, rt, stored)

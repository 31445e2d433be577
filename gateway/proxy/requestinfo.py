"""What a proxied Kubernetes request does: verb, resource, namespace, name (pure).

The same reading kube-apiserver's ``RequestInfoFactory`` makes of a path, reduced to
what metrics and the audit log need. ``/api/v1/namespaces/ns/pods/web-0/log`` is a
``get`` of ``pods/log`` (long-running with ``?follow=true``); a GET without a name is a
``list``, or a ``watch`` with ``?watch=true`` or the legacy ``/watch/`` prefix (the
name of a ``fieldSelector=metadata.name=NAME`` list or watch is its name); a DELETE
without a name is a ``deletecollection``; an upgraded request (exec, attach,
port-forward) is a ``connect`` (kube-apiserver says ``create`` or ``get``). Discovery
(``/api``, ``/api/v1``, ``/apis/apps/v1``) and paths outside ``/api`` and ``/apis``
(``/version``, ``/openapi/v3``) are non-resource requests whose verb is the lower-case
method.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.proxy.paths import CACHED_TARGET_BYTES
from tunnel.kubequery import query_flag, query_value

_METHOD_VERBS = {
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
    "GET": "get",
    "HEAD": "get",
}
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


@dataclass(frozen=True, slots=True)
class RequestInfo:
    verb: str
    resource: str = ""
    """Resource, with ``/subresource`` when there is one (``pods/exec``)."""
    namespace: str = ""
    name: str = ""
    api_group: str = ""
    long_running: bool = False
    """Watches, followed logs and upgraded sessions: they last as long as the client
    wants, so they have no meaningful latency, and a stopping gateway ends them."""


def _selected_name(query: str) -> str:
    """The name a ``fieldSelector`` requires (``metadata.name=web-0``), as
    kube-apiserver reads it into a list's or watch's name."""
    selector = query_value(query, "fieldSelector")
    if not selector:
        return ""
    for term in selector.split(","):
        field, eq, value = term.partition("=")
        if not eq or field.endswith("!") or field.strip() != "metadata.name":
            continue
        value = value.removeprefix("=")
        if value in {"", ".", ".."} or "/" in value or "%" in value or "\\" in value:
            return ""
        return value
    return ""


_CACHE_SIZE = 4096
CACHED_METHOD_BYTES = 64
_cache: dict[tuple[str, str, bool], RequestInfo] = {}


def request_info(method: str, target: str, upgrade: bool = False) -> RequestInfo:
    """Read ``target`` (path and query as sent to the API server); cached, as clients
    repeat the same few requests (not for a target over ``CACHED_TARGET_BYTES`` or a
    method over ``CACHED_METHOD_BYTES``: a cache a client could fill with big keys)."""
    key = (method, target, upgrade)
    cached = _cache.get(key)
    if cached is not None:
        return cached
    info = _read(method, target, upgrade)
    if len(target) > CACHED_TARGET_BYTES or len(method) > CACHED_METHOD_BYTES:
        return info
    if len(_cache) >= _CACHE_SIZE:
        _cache.clear()
    _cache[key] = info
    return info


def _read(method: str, target: str, upgrade: bool) -> RequestInfo:
    path, _, query = target.partition("?")
    parts = [p for p in path.split("/") if p]
    prefix = parts[0] if parts else ""
    # /api, /api/v1, /apis, /apis/apps, /apis/apps/v1 (discovery) are non-resource too.
    if prefix not in {"api", "apis"} or len(parts) < (3 if prefix == "api" else 4):
        if upgrade:
            return RequestInfo(verb="connect", long_running=True)
        return RequestInfo(verb=method.lower())
    if prefix == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    watch_prefix = rest[0] == "watch"
    if watch_prefix:
        rest = rest[1:]
    namespace = ""
    if len(rest) >= 2 and rest[0] == "namespaces":
        namespace = rest[1]
        # /namespaces/ns/pods/...: a resource in the namespace; /namespaces/ns and
        # /namespaces/ns/status (or /finalize): the namespace object itself.
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) >= 2 else ""
    if len(rest) >= 3:
        resource = f"{resource}/{rest[2]}"
    verb = _METHOD_VERBS.get(method.upper(), method.lower())
    if upgrade:
        verb = "connect"
    elif watch_prefix and verb == "get":
        verb = "watch"
    elif verb == "get" and not name:
        # As kube-apiserver: ?watch counts on collections only (a named GET is a get).
        verb = "watch" if query_flag(query, "watch") else "list"
        name = _selected_name(query)
    elif verb == "delete" and not name:
        verb = "deletecollection"
    long_running = verb in {"watch", "connect"} or (
        resource.endswith("/log") and query_flag(query, "follow")
    )
    return RequestInfo(verb, resource, namespace, name, group, long_running)

"""What a proxied Kubernetes request does: verb, resource, namespace, name (pure).

The same reading kube-apiserver's ``RequestInfoFactory`` makes of a path, reduced to
what metrics and the audit log need. ``/api/v1/namespaces/ns/pods/web-0/log`` is a
``get`` of ``pods/log`` (long-running with ``?follow=true``); a GET without a name is a
``list``, or a ``watch`` with ``?watch=true`` or the legacy ``/watch/`` prefix; a
DELETE without a name is a ``deletecollection``; an upgraded request (exec, attach,
port-forward) is a ``connect``. Paths outside ``/api`` and ``/apis`` (``/version``,
``/openapi/v3``) are non-resource requests whose verb is the lower-case method.
"""

from __future__ import annotations

from dataclasses import dataclass

_METHOD_VERBS = {
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
    "GET": "get",
    "HEAD": "get",
}
_TRUE = frozenset({"true", "1"})


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


def _query_flag(query: str, key: str) -> bool:
    if not query:
        return False
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name == key:
            return value.lower() in _TRUE
    return False


def request_info(method: str, target: str, upgrade: bool = False) -> RequestInfo:
    """Read ``target`` (path and query as sent to the API server)."""
    path, _, query = target.partition("?")
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] not in {"api", "apis"}:
        if upgrade:
            return RequestInfo(verb="connect", long_running=True)
        return RequestInfo(verb=method.lower())
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        if len(parts) < 3:  # /apis or /apis/<group>: discovery
            return RequestInfo(verb="get")
        group, rest = parts[1], parts[3:]
    if not rest:  # /api/v1, /apis/apps/v1: discovery
        return RequestInfo(verb="get", api_group=group)
    watch_prefix = rest[0] == "watch"
    if watch_prefix:
        rest = rest[1:]
    namespace = ""
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    elif len(rest) >= 2 and rest[0] == "namespaces":
        namespace = rest[1]  # the namespace object itself
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) >= 2 else ""
    if len(rest) >= 3:
        resource = f"{resource}/{rest[2]}"
    verb = _METHOD_VERBS.get(method.upper(), method.lower())
    if upgrade:
        verb = "connect"
    elif verb == "get" and (watch_prefix or _query_flag(query, "watch")):
        verb = "watch"
    elif verb == "get" and not name:
        verb = "list"
    elif verb == "delete" and not name:
        verb = "deletecollection"
    long_running = verb in {"watch", "connect"} or (
        resource.endswith("/log") and _query_flag(query, "follow")
    )
    return RequestInfo(verb, resource, namespace, name, group, long_running)

"""apiserver's RequestInfoFactory: what a URL and method mean (verb, group, resource, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field

_NAMESPACE_SUBRESOURCES = ("status", "finalize")
_TRUE = ("1", "t", "T", "TRUE", "true", "True")


def parse_bool(value: str | None) -> bool:
    """strconv.ParseBool, with anything unparsable as false."""
    return value in _TRUE


@dataclass
class RequestInfo:
    path: str
    verb: str
    is_resource: bool = False
    api_prefix: str = ""
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=list)

    def object_ref(self) -> dict[str, str]:
        ref = {
            "resource": self.resource,
            "namespace": self.namespace,
            "name": self.name,
            "apiGroup": self.group,
            "apiVersion": self.version,
            "subresource": self.subresource,
        }
        return {k: v for k, v in ref.items() if v}


def request_info(method: str, path: str, query: dict[str, str]) -> RequestInfo:
    lower = method.lower()
    info = RequestInfo(path=path, verb=lower)
    parts = [p for p in path.strip("/").split("/") if p] if path != "/" else []
    if len(parts) < 2 or parts[0] not in ("api", "apis"):
        return info
    info.api_prefix = parts[0]
    parts = parts[1:]
    if info.api_prefix == "apis":
        if len(parts) < 2:
            return info
        info.group = parts[0]
        parts = parts[1:]
    info.version = parts[0]
    parts = parts[1:]
    if not parts:
        return info
    info.is_resource = True
    verb = {
        "post": "create",
        "get": "get",
        "head": "get",
        "put": "update",
        "patch": "patch",
        "delete": "delete",
    }.get(lower, "")
    if parts[0] == "watch" and verb == "get":
        verb = "watch"
        parts = parts[1:]
    if len(parts) > 1 and parts[0] == "namespaces":
        info.namespace = parts[1]
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    info.parts = parts
    if parts:
        info.resource = parts[0]
    if len(parts) >= 2:
        info.name = parts[1]
    if len(parts) >= 3:
        info.subresource = parts[2]
    if info.resource == "namespaces" and len(parts) >= 2:
        # /api/v1/namespaces/{name}[/status]
        info.namespace = parts[1]
    if len(parts) > 3:
        info.subresource = "/".join(parts[2:3])
    if not info.name:
        if verb == "get":
            verb = "list"
        elif verb == "delete":
            verb = "deletecollection"
    if verb in ("list", "get") and parse_bool(query.get("watch")):
        verb = "watch"
    info.verb = verb
    return info

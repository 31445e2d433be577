"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and approximations of
strategic merge patch and server-side apply good enough for kubectl's own patches."""

from __future__ import annotations

import copy
from typing import Any

from .status import ApiError, bad_request

# Merge keys of the lists kubectl's strategic merge patches touch (from k8s.io/api struct tags).
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "secrets": "name",
}
# "ports" is keyed by containerPort in containers and by port in services.
_PORT_KEYS = ("containerPort", "port")


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for part in parts[:-1]:
        if isinstance(cur, list):
            try:
                cur = cur[int(part)]
            except (ValueError, IndexError) as exc:
                raise _missing(parts) from exc
        elif isinstance(cur, dict):
            if part not in cur:
                raise _missing(parts)
            cur = cur[part]
        else:
            raise _missing(parts)
    return cur


def _rejected() -> ApiError:
    """`NewGenericServerResponse(422, ...)`, what a failing JSON patch gets."""
    return ApiError(
        422, "Invalid", "the server rejected our request due to an error in our request", {}
    )


def _missing(parts: list[str]) -> ApiError:
    del parts
    return _rejected()


def _get(doc: Any, parts: list[str]) -> Any:
    if not parts:
        return doc
    parent = _parent(doc, parts)
    last = parts[-1]
    if isinstance(parent, list):
        try:
            return parent[int(last)]
        except (ValueError, IndexError) as exc:
            raise _missing(parts) from exc
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    raise _missing(parts)


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _parent(doc, parts)
    last = parts[-1]
    if isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            try:
                idx = int(last)
            except ValueError as exc:
                raise _missing(parts) from exc
            if idx > len(parent) or idx < 0:
                raise _missing(parts)
            parent.insert(idx, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise _missing(parts)
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    parent = _parent(doc, parts)
    last = parts[-1]
    if isinstance(parent, list):
        try:
            parent.pop(int(last))
        except (ValueError, IndexError) as exc:
            raise _missing(parts) from exc
    elif isinstance(parent, dict) and last in parent:
        del parent[last]
    else:
        raise _missing(parts)
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op:
            raise bad_request("invalid JSON patch operation")
        kind = op["op"]
        parts = _pointer(op.get("path", ""))
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc = _remove(doc, parts)
        elif kind == "replace":
            _get(doc, parts)
            if not parts:
                doc = copy.deepcopy(op.get("value"))
            else:
                doc = _remove(doc, parts)
                doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            value = copy.deepcopy(_get(doc, src))
            if kind == "move":
                doc = _remove(doc, src)
            doc = _add(doc, parts, value)
        elif kind == "test":
            if _get(doc, parts) != op.get("value"):
                raise _rejected()
        else:
            raise bad_request(f"Unexpected kind: {kind}")
    return doc


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        for key in _PORT_KEYS:
            if all(isinstance(i, dict) and key in i for i in items):
                return key
        return None
    return MERGE_KEYS.get(field)


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """An approximation of strategic merge patch: merge patch plus keyed list merging and the
    `$patch`, `$setElementOrder`, `$retainKeys` and `$deleteFromPrimitiveList` directives."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [x for x in result[field] if x not in (value or [])]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(key, result[key], value)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(field: str, current: list[Any], patch: list[Any]) -> list[Any]:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [p for p in patch if not (isinstance(p, dict) and "$patch" in p)]
    key = _merge_key(field, [*current, *[p for p in patch if not _is_directive(p)]])
    if key is None:
        return copy.deepcopy([p for p in patch if not _is_directive(p)])
    out = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict):
            continue
        idx = next(
            (i for i, c in enumerate(out) if isinstance(c, dict) and c.get(key) == item.get(key)),
            None,
        )
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(strategic_merge_patch({}, item))
        else:
            out[idx] = strategic_merge_patch(out[idx], item)
    return out


def _is_directive(item: Any) -> bool:
    return isinstance(item, dict) and "$patch" in item


def apply_patch(target: dict[str, Any] | None, applied: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply, approximated: the applied configuration is merged over the live
    object (keyed lists merged), nothing is removed."""
    if target is None:
        return copy.deepcopy(applied)

    def merge(live: Any, cfg: Any, field: str = "") -> Any:
        if isinstance(cfg, dict) and isinstance(live, dict):
            out = copy.deepcopy(live)
            for k, v in cfg.items():
                out[k] = merge(live.get(k), v, k)
            return out
        if isinstance(cfg, list) and isinstance(live, list):
            return _merge_list(field, live, cfg)
        return copy.deepcopy(cfg)

    merged = merge(target, applied)
    assert isinstance(merged, dict)
    return merged

"""Content negotiation: which representation a client asked for, and how its body is encoded."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from . import protobuf
from .status import ApiError, bad_request, not_acceptable, unsupported_media_type

JSON = "application/json"
YAML = "application/yaml"
PROTOBUF = "application/vnd.kubernetes.protobuf"
CBOR = "application/cbor"


@dataclass
class MediaRange:
    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    parts = [p.strip() for p in value.split(";")]
    params = {}
    for p in parts[1:]:
        if "=" in p:
            k, v = p.split("=", 1)
            params[k.strip().lower()] = v.strip().strip('"')
    return parts[0].lower(), params


def parse_accept(header: str | None) -> list[MediaRange]:
    if not header:
        return [MediaRange("*/*")]
    ranges = []
    for raw in header.split(","):
        item = raw.strip()
        if not item:
            continue
        mtype, params = parse_media_type(item)
        q = 1.0
        if "q" in params:
            try:
                q = float(params.pop("q"))
            except ValueError:
                q = 0.0
        ranges.append(MediaRange(mtype, params, q))
    ranges.sort(key=lambda r: -r.q)
    return [r for r in ranges if r.q > 0]


@dataclass
class Target:
    """What to answer with: plain object, Table, or PartialObjectMetadata(List)."""

    media: str = JSON  # JSON or YAML
    as_kind: str = ""  # "", "Table", "PartialObjectMetadata", "PartialObjectMetadataList"
    api_version: str = ""  # meta.k8s.io/v1 or meta.k8s.io/v1beta1 for as_kind


_TABLE_VERSIONS = ("v1", "v1beta1")


def negotiate(header: str | None, *, is_list: bool, allow_transform: bool = True) -> Target:
    """Choose the representation, like apiserver's negotiation + `targetEncodingForTransform`.

    Protobuf is never produced: when a client accepts protobuf it also accepts JSON (client-go
    always offers `application/vnd.kubernetes.protobuf,application/json`), and it decodes the
    answer by its Content-Type.
    """
    ranges = parse_accept(header)
    offered = False
    for r in ranges:
        as_kind = r.params.get("as", "")
        if as_kind:
            if not allow_transform or r.type not in (JSON, "application/*", "*/*"):
                continue
            if r.params.get("g") != "meta.k8s.io" or r.params.get("v") not in _TABLE_VERSIONS:
                continue
            if as_kind == "Table":
                return Target(JSON, "Table", f"meta.k8s.io/{r.params['v']}")
            if as_kind in ("PartialObjectMetadata", "PartialObjectMetadataList"):
                if (as_kind == "PartialObjectMetadataList") != is_list:
                    continue
                return Target(JSON, as_kind, f"meta.k8s.io/{r.params['v']}")
            continue
        if r.type in (JSON, "application/*", "*/*", "application/json-seq"):
            return Target(JSON)
        if r.type in (YAML, "application/yml", "text/yaml"):
            return Target(YAML)
        if r.type == PROTOBUF:
            offered = True
    if offered:
        return Target(JSON)
    raise not_acceptable([JSON, YAML, PROTOBUF])


def decode_body(
    raw: bytes, content_type: str | None, *, allow_protobuf: bool = True
) -> dict[str, Any]:
    """Decode a request body the way the real server accepts it (JSON, YAML, or protobuf for
    built-in kinds)."""
    mtype, _ = parse_media_type(content_type or JSON)
    accepted = [JSON, YAML] + ([PROTOBUF] if allow_protobuf else [])
    if mtype in ("", JSON, "*/*"):
        try:
            value = json.loads(raw or b"null")
        except ValueError as exc:
            raise bad_request(
                f"Object 'Kind' is missing in '{raw[:200].decode(errors='replace')}'"
            ) from exc
    elif mtype in (YAML, "application/yml", "text/yaml"):
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise bad_request(f"error converting YAML to JSON: {exc}") from exc
    elif mtype == PROTOBUF and allow_protobuf:
        value = protobuf.decode_object(raw)
    else:
        raise unsupported_media_type(mtype, accepted)
    if not isinstance(value, dict):
        raise bad_request(f"Object 'Kind' is missing in '{raw[:200].decode(errors='replace')}'")
    return value


def encode(obj: Any, target: Target) -> tuple[bytes, str]:
    if target.media == YAML:
        return yaml.safe_dump(obj, sort_keys=False).encode(), YAML
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n", JSON


__all__ = ["ApiError", "Target", "decode_body", "encode", "negotiate", "parse_media_type"]

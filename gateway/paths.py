"""Exact parsing of proxied paths (pure).

``/k8s/clusters/<id>/<rest>`` is split on the raw (still percent-encoded) path, and
anything that a server or a later normaliser could read differently is refused:
dot segments (plain or encoded), empty segments, encoded slashes and backslashes.
So no spelling of a path reaches another cluster, or leaves the cluster's API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

PREFIX = "/k8s/clusters/"
_CLUSTER_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class BadPath(ValueError):
    """The path is not one the proxy forwards; the message says why."""


@dataclass(frozen=True, slots=True)
class ClusterPath:
    cluster_id: str
    target: str
    """Path and query to send to the API server, still percent-encoded."""


_CACHE_SIZE = 4096
_split_cache: dict[str, ClusterPath] = {}


def split_cluster_path(raw_path: str) -> ClusterPath:
    """Cached: clients ask for the same few paths over and over (refused ones are not kept)."""
    cached = _split_cache.get(raw_path)
    if cached is not None:
        return cached
    result = _split(raw_path)
    if len(_split_cache) >= _CACHE_SIZE:
        _split_cache.clear()
    _split_cache[raw_path] = result
    return result


def _split(raw_path: str) -> ClusterPath:
    path, sep, query = raw_path.partition("?")
    if not path.startswith(PREFIX):
        raise BadPath("not a cluster path")
    rest = path[len(PREFIX) :]
    cluster_id, slash, tail = rest.partition("/")
    if not _CLUSTER_ID.match(cluster_id):
        raise BadPath("invalid cluster id")
    target = "/" + tail if slash else "/"
    check_segments(target)
    return ClusterPath(cluster_id, target + sep + query)


def check_segments(path: str) -> None:
    if "\\" in path or "%5c" in path.lower():
        raise BadPath("backslashes are not allowed in paths")
    if "%2f" in path.lower():
        raise BadPath("encoded slashes are not allowed in paths")
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        if segment == "" and index != len(segments) - 1:
            raise BadPath("empty path segments are not allowed")
        if unquote(segment) in {".", ".."}:
            raise BadPath("dot segments are not allowed in paths")

"""Exact parsing of proxied request targets (pure).

``/k8s/clusters/<id>/<rest>?<query>`` is read once, here, into the form that is both
authorised and forwarded:

- the raw target may hold only visible ASCII (no space, control character, non-ASCII
  byte or ``#``: a request target has no fragment), and every ``%`` must start a valid
  escape;
- the path is percent-decoded once, segment by segment; a decoded segment may not hold a
  control character (``%00``, ``%0d%0a`` ...), a slash or a backslash (``%2F``, ``%5C``),
  and may not be ``.`` or ``..`` (plain or encoded); empty segments are refused but for
  a trailing slash;
- the path forwarded is the decoded segments encoded again in one canonical way, so
  that the API server, which decodes the path once (Go's ``URL.Path``), reads exactly
  the segments the gateway authorised: ``ex%65c`` is authorised *and* forwarded as
  ``exec``. The query is passed on as it came (its characters checked as above).

So no spelling of a path reaches another cluster, leaves the cluster's API, or names a
resource or subresource other than the one the access check saw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote_from_bytes, unquote_to_bytes

PREFIX = "/k8s/clusters/"
_CLUSTER_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_RAW_TARGET = re.compile(r"[!\"$-~]*")
"""Visible ASCII but ``#`` (0x21-0x7E without 0x23)."""
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SEGMENT_SAFE = b"!$&'()*+,;=:@-._~"
"""RFC 3986 ``pchar`` characters that stay unescaped (letters and digits always do)."""
_FORBIDDEN_IN_SEGMENT = re.compile(rb"[\x00-\x1f\x7f/\\]")


class BadPath(ValueError):
    """The path is not one the proxy forwards; the message says why."""


@dataclass(frozen=True, slots=True)
class ClusterPath:
    cluster_id: str
    target: str
    """What is forwarded to the API server: the canonical path, then ``?query`` as sent."""
    path: str
    """The decoded path below the cluster (``/api/v1/.../exec``): what access checks and
    request info read. Non-ASCII bytes appear as latin-1 characters."""


_CACHE_SIZE = 4096
CACHED_TARGET_BYTES = 1024
"""Longer targets are not cached (here and in ``gateway.proxy.requestinfo``): kubectl's are far
shorter, and 4,096 targets of 60 KiB (a head's limit) would hold hundreds of MB."""
_split_cache: dict[str, ClusterPath] = {}


def split_cluster_path(raw_target: str) -> ClusterPath:
    """Cached: clients ask for the same few paths over and over (refused ones and long
    ones are not kept)."""
    cached = _split_cache.get(raw_target)
    if cached is not None:
        return cached
    result = _split(raw_target)
    if len(raw_target) > CACHED_TARGET_BYTES:
        return result
    if len(_split_cache) >= _CACHE_SIZE:
        _split_cache.clear()
    _split_cache[raw_target] = result
    return result


def _split(raw_target: str) -> ClusterPath:
    check_characters(raw_target)
    raw_path, sep, query = raw_target.partition("?")
    if not raw_path.startswith(PREFIX):
        raise BadPath("not a cluster path")
    raw_id, slash, tail = raw_path[len(PREFIX) :].partition("/")
    if not _CLUSTER_ID.fullmatch(raw_id):
        raise BadPath("invalid cluster id")
    canonical, decoded = normalise("/" + tail if slash else "/")
    return ClusterPath(raw_id, canonical + sep + query, decoded)


def check_characters(raw_target: str) -> None:
    """Visible ASCII but ``#``, and every ``%`` the start of an escape."""
    if not _RAW_TARGET.fullmatch(raw_target):
        raise BadPath("the request target may hold only visible ASCII characters and no '#'")
    if "%" in raw_target and _BAD_ESCAPE.search(raw_target):
        raise BadPath("invalid percent-encoding in the request target")


def normalise(raw_path: str) -> tuple[str, str]:
    """``raw_path`` (no query) as (canonical encoding, decoded path); ``BadPath`` if it
    has a segment that decodes to something a path segment must not be."""
    if "%" not in raw_path and "\\" not in raw_path and "/." not in raw_path:
        if "//" in raw_path:  # an empty segment with another after it
            raise BadPath("empty path segments are not allowed")
        return raw_path, raw_path  # nothing to decode: canonical already (the common case)
    segments = raw_path.split("/")[1:]
    last = len(segments) - 1
    canonical: list[str] = [""]
    decoded: list[str] = [""]
    for index, segment in enumerate(segments):
        raw = unquote_to_bytes(segment)
        if not raw and index != last:
            raise BadPath("empty path segments are not allowed")
        if raw in (b".", b".."):
            raise BadPath("dot segments are not allowed in paths")
        bad = _FORBIDDEN_IN_SEGMENT.search(raw)
        if bad is not None:
            char = bad.group()
            if char == b"/":
                raise BadPath("encoded slashes are not allowed in paths")
            if char == b"\\":
                raise BadPath("backslashes are not allowed in paths")
            raise BadPath("control characters are not allowed in paths")
        canonical.append(quote_from_bytes(raw, safe=_SEGMENT_SAFE))
        decoded.append(raw.decode("latin-1"))
    return "/".join(canonical), "/".join(decoded)


def check_segments(path: str) -> None:
    """Raise ``BadPath`` for a path (no query) that ``normalise`` refuses."""
    check_characters(path)
    normalise(path)

"""What a cluster role lets a caller do at the gateway (pure).

Owners and members are passed through: the API server's RBAC decides, with the
role group (``herdgate:cluster-owner`` ...) among the impersonated groups. The
``read-only`` role is also enforced here, so that it holds even in a cluster whose
RBAC does not bind the role groups: reads only, plus the self-reviews behind
``kubectl auth whoami`` and ``kubectl auth can-i``.
"""

from __future__ import annotations

import re

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SELF_REVIEW = re.compile(
    r"^/apis/(authentication\.k8s\.io/[^/]+/selfsubjectreviews"
    r"|authorization\.k8s\.io/[^/]+/selfsubject(access|rules)reviews)/?$"
)
# Subresources that act on workloads even when requested with GET (WebSocket upgrades).
_ACTIVE_SUBRESOURCE = re.compile(r"/(exec|attach|portforward|proxy)(/|$)")


def is_allowed(role: str, method: str, path: str) -> bool:
    """Whether ``role`` may send ``method`` to ``path``: the *decoded* path, without the
    query (``gateway.proxy.paths.ClusterPath.path``, the one the API server will read)."""
    if role != "read-only":
        return True
    if method in _READ_METHODS:
        return not _ACTIVE_SUBRESOURCE.search(path)
    return method == "POST" and _SELF_REVIEW.match(path) is not None

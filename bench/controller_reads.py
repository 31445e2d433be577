"""What the gateway's cluster controller reads from a cluster, for the bench's stand-ins.

A cluster turns ``active`` once its API server answers ``/readyz`` through the tunnel
(gateway/controllers/cluster_health.py); the controller also reads the version, the
nodes and the namespaces. Path -> (content type, body) for a ``200``; the stand-ins
refuse the controller's watches of them (404), and it backs those off.
"""

from __future__ import annotations

import json

_JSON = "application/json"


def _list(kind: str) -> bytes:
    return json.dumps({"kind": kind, "apiVersion": "v1", "metadata": {}, "items": []}).encode()


READS: dict[str, tuple[str, bytes]] = {
    "/readyz": ("text/plain", b"ok"),
    "/livez": ("text/plain", b"ok"),
    "/version": (
        _JSON,
        json.dumps({"major": "1", "minor": "32", "gitVersion": "v1.32.0"}).encode(),
    ),
    "/api/v1/nodes": (_JSON, _list("NodeList")),
    "/api/v1/namespaces": (_JSON, _list("NamespaceList")),
}

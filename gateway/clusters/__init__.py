"""Clusters: the gateway's side of each downstream cluster.

Agents' tunnels (``tunnels``: admission and the live links, ``admit`` and
``serve_agent``; the ``/v3/connect`` endpoint itself is ``gateway.front.agents``), requests
to a cluster's API server over them (``upstream``: HTTP/1.1 on tunnel streams, a pool
per link) and the replica model (``replicas``: which replica holds tunnels to which
cluster).

May import: ``gateway.identity``, ``gateway.store``, ``gateway.telemetry``, ``tunnel``
and ``config``.
"""

from __future__ import annotations

from config import native

native.use_build(__name__, __path__)

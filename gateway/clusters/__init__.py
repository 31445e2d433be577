"""Clusters: the gateway's side of each downstream cluster.

Agents' tunnels (``tunnels``: the ``/v3/connect`` endpoint and the live links), the
replica model (``replicas``), the ACE sync of token records into each cluster (``ace``)
and the gateway's own API client per cluster (``downstream``).

May import: ``gateway.identity``, ``gateway.store``, ``gateway.telemetry``, ``tunnel``
and ``config``.
"""

from __future__ import annotations

from config import native

native.use_build(__name__, __path__)

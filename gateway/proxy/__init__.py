"""The proxy: ``/k8s/clusters/<id>/...`` requests, authenticate -> authorise -> rewrite ->
forward -> stream back.

``handler`` is the one entry (``answer``); ``paths`` and ``requestinfo`` read the
request, ``access`` decides, ``impersonation`` and ``heads`` write the head the API
server gets, ``impersonation_review`` asks the cluster whether a client's ``kubectl --as``
may pass, ``gateway.clusters.upstream`` sends it through the cluster's tunnel,
``upgrade`` relays exec/attach/port-forward, ``sessions`` ends long-running answers of
identities that lose access, ``exchange`` counts and audits each request.

May import: ``gateway.clusters``, ``gateway.identity``, ``gateway.store``,
``gateway.telemetry``, ``tunnel``, ``ace`` (the extra fields' keys) and ``config``;
never the front above it.
``impersonation`` and ``paths`` are sans-I/O.
"""

from __future__ import annotations

from config import native

native.use_build(__name__, __path__)

"""herdgate's gateway: one authenticating HTTPS front for many clusters' API servers.

Its packages, from the top down (each may import only those below it; the import
contracts in ``pyproject.toml`` hold them to this, CI runs them):

- ``cli`` — ``herdgate gateway``'s command line: settings in, the process started.
- ``operations`` — the running process: the aiohttp application holding the services
  (``app``), the listener and graceful stop (``server``), workers, reload, health.
- ``ui`` — the web page at ``/ui/`` (log in, clusters, kubeconfigs, one's tokens):
  server-rendered HTML built on ``api``'s pieces; ``operations`` installs its routes.
- ``front`` — client connections: TLS listener glue, HTTP/1.1, HTTP/2 + HPACK, and the
  bridge that hands management-API requests to aiohttp.
- ``api`` — the management API (``/v3``): login, tokens, users, clusters, bindings.
  ``front`` and ``api`` are side by side: neither imports the other (the front reaches
  the API only through aiohttp's application, which ``operations`` builds).
- ``controllers`` — the gateway's own work inside each cluster (ACE sync, its API client).
- ``proxy`` — ``/k8s/clusters/<id>/...``: authenticate, authorise, rewrite, forward,
  stream back; one entry, ``gateway.proxy.handler.answer``.
- ``clusters`` — agents' tunnels, requests over them (``upstream``), replicas.
- ``identity`` — the directory (users, tokens and bindings, and the in-memory view of
  every other stored record type too: clusters, registration tokens, replicas);
  hashing; login limits; identity providers.
- ``telemetry`` — metrics, audit log, drain state.
- ``store`` — the stored records and their backends (SQLite, etcd).
- ``keys``, ``runtime``, ``errors``, ``pieces`` — application keys, start-up facts, error
  answers, ``async for`` over the reads of a body (used by ``proxy`` and ``clusters``).

Request-path modules may run compiled: see ``config.native``.
"""

from __future__ import annotations

from config import native

native.use_build(__name__, __path__)

"""Telemetry: what the gateway tells its operators, used by every layer above.

Prometheus metrics (``metrics``), the audit log and the request ids on its records and
log lines (``audit``, ``new_request_id``), and the drain state that a stopping or
draining gateway shows every request path (``drain``).

May import: ``gateway.store``, ``gateway.errors`` and ``config`` only.
"""

from __future__ import annotations

from config import native

native.use_build(__name__, __path__)

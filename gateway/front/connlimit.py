"""How many client connections the gateway holds: in total and per source address.

``ConnectionLimit.admit`` is the listener's hook (``tunnel.tls.TLSServer``): it runs
when a connection is accepted, before its TLS handshake, so half-done handshakes count
too. It returns the function that gives the place back when the connection ends, or
None: the connection is closed at once (``herdgate_client_connections_refused_total``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.telemetry import metrics

logger = logging.getLogger(__name__)

Release = Callable[[], None]


class ConnectionLimit:
    __slots__ = ("_by_address", "exempt", "max_connections", "open", "per_address")

    def __init__(
        self,
        max_connections: int,
        per_address: int,
        exempt: Callable[[str], bool] | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.per_address = per_address
        self.exempt = exempt
        """Addresses without a per-address limit (trusted balancers: ``server.trusted_proxies``)."""
        self.open = 0
        self._by_address: dict[str, int] = {}

    def admit(self, address: str) -> Release | None:
        if self.open >= self.max_connections:
            metrics.CONNECTIONS_REFUSED.labels("total").inc()
            return None
        if self.exempt is not None and self.exempt(address):
            return self._admit_exempt()
        held = self._by_address.get(address, 0)
        if held >= self.per_address:
            metrics.CONNECTIONS_REFUSED.labels("address").inc()
            return None
        self._by_address[address] = held + 1
        self.open += 1
        metrics.CONNECTIONS_OPEN.set(self.open)
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.open -= 1
            left = self._by_address[address] - 1
            if left:
                self._by_address[address] = left
            else:
                del self._by_address[address]
            metrics.CONNECTIONS_OPEN.set(self.open)

        return release

    def _admit_exempt(self) -> Release:
        self.open += 1
        metrics.CONNECTIONS_OPEN.set(self.open)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open -= 1
                metrics.CONNECTIONS_OPEN.set(self.open)

        return release

    def held_by(self, address: str) -> int:
        return self._by_address.get(address, 0)

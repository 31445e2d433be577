"""Facts the gateway settles at start-up and serves from memory."""

from __future__ import annotations

from dataclasses import dataclass

from config.tls import ca_checksum


@dataclass(frozen=True)
class Runtime:
    server_url: str
    """Public URL of the gateway, without a trailing slash."""
    ca_pem: str
    """The CA that agents and kubeconfigs trust (empty when the certificate is public)."""
    version: str
    advertise_url: str = ""
    """Where agents reach this replica itself (``replica.advertise_url``, or derived)."""

    @property
    def ca_checksum(self) -> str:
        return ca_checksum(self.ca_pem.encode()) if self.ca_pem else ""

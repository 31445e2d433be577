"""Two protocol ends wired back to back, deterministically (no I/O)."""

from __future__ import annotations

from tunnel.events import Event
from tunnel.protocol import Limits, Side, TunnelProtocol


class Pair:
    def __init__(self, client_limits: Limits | None = None, server_limits: Limits | None = None):
        self.client = TunnelProtocol(Side.CLIENT, client_limits, metadata=b"agent")
        self.server = TunnelProtocol(Side.SERVER, server_limits, metadata=b"gateway")
        self.to_server()
        self.to_client()

    def to_server(self) -> list[Event]:
        return self.server.receive_data(self.client.data_to_send())

    def to_client(self) -> list[Event]:
        return self.client.receive_data(self.server.data_to_send())

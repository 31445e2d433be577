"""Micro-benchmark: the tunnel's sans-I/O framing against the ``h2`` library, CPU only.

Two ends back to back in memory, no I/O, one exchange per iteration, as the gateway
and the agent do for one small GET:

- ``tunnel``: ``TunnelProtocol`` (gateway = SERVER side, agent = CLIENT side): the gateway
  opens a stream and sends the request head as DATA; the agent accepts it and answers
  with the response head and a 2 KB body, FIN; the gateway ends its side. Received data
  is acknowledged (credit returned) as ``Session`` does.
- ``h2``: ``H2Connection`` client and server: HEADERS for the request (the same header
  fields, with ``Impersonate-*``), response HEADERS and a 2 KB DATA with END_STREAM, flow
  control acknowledged. Once with h2's defaults, once with header validation and
  normalisation off (the fastest configuration).

Reports µs per exchange (median of batches) and the ratio h2 / tunnel.
Run alone: ``.venv/bin/python -m bench.framing [--seconds 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events

from tunnel.events import DataReceived, StreamOpened
from tunnel.protocol import Side, TunnelProtocol

BODY = b'{"kind":"ConfigMap","apiVersion":"v1","data":{"payload":"' + b"x" * 1990 + b'"}}'
REQUEST_HEADERS = [
    (b"host", b"10.43.0.1:443"),
    (b"authorization", b"Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6ImJlbmNoIn0.c2VydmljZS1hY2NvdW50"),
    (b"accept", b"application/json"),
    (b"user-agent", b"kubectl/v1.32.0 (linux/amd64) kubernetes/bench"),
    (b"impersonate-user", b"u-bench"),
    (b"impersonate-group", b"herdgate:cluster-member"),
    (b"impersonate-extra-username", b"bench"),
]
RESPONSE_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
    (b"audit-id", b"5d7e7f8c-7c1e-4d0e-9d3a-3c8b1e2f4a5b"),
    (b"cache-control", b"no-cache, private"),
]
PATH = b"/api/v1/namespaces/default/configmaps/bench"
REQUEST_BYTES = (
    b"GET " + PATH + b" HTTP/1.1\r\n"
    + b"".join(n + b": " + v + b"\r\n" for n, v in REQUEST_HEADERS)
    + b"\r\n"
)  # fmt: skip
RESPONSE_BYTES = (
    b"HTTP/1.1 200 OK\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in RESPONSE_HEADERS)
    + b"\r\n" + BODY
)  # fmt: skip


def tunnel_pair() -> Callable[[], None]:
    gateway = TunnelProtocol(Side.SERVER)
    agent = TunnelProtocol(Side.CLIENT)
    agent.receive_data(gateway.data_to_send())
    gateway.receive_data(agent.data_to_send())

    def exchange() -> None:
        sid = gateway.open_stream()
        gateway.send_data(sid, REQUEST_BYTES)
        for event in agent.receive_data(gateway.data_to_send()):
            if type(event) is DataReceived:
                agent.acknowledge_received_data(event.stream_id, len(event.data))
            elif type(event) is StreamOpened:
                agent.accept_stream(event.stream_id)
        agent.send_data(sid, RESPONSE_BYTES, end_stream=True)
        for event in gateway.receive_data(agent.data_to_send()):
            if type(event) is DataReceived:
                gateway.acknowledge_received_data(event.stream_id, len(event.data))
        gateway.end_stream(sid)
        agent.receive_data(gateway.data_to_send())

    return exchange


def h2_pair(validate: bool) -> Callable[[], None]:
    def config(client: bool) -> h2.config.H2Configuration:
        return h2.config.H2Configuration(
            client_side=client,
            header_encoding=None,
            validate_outbound_headers=validate,
            normalize_outbound_headers=validate,
            validate_inbound_headers=validate,
            normalize_inbound_headers=validate,
        )

    client = h2.connection.H2Connection(config(True))
    server = h2.connection.H2Connection(config(False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    request = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", REQUEST_HEADERS[0][1]),
        (b":path", PATH),
        *REQUEST_HEADERS[1:],
    ]
    response = [(b":status", b"200"), *RESPONSE_HEADERS]

    def exchange() -> None:
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, request, end_stream=True)
        for event in server.receive_data(client.data_to_send()):
            if isinstance(event, h2.events.RequestReceived):
                server.send_headers(sid, response)
                server.send_data(sid, BODY, end_stream=True)
        for event in client.receive_data(server.data_to_send()):
            if isinstance(event, h2.events.DataReceived):
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        server.receive_data(client.data_to_send())

    return exchange


@dataclass(frozen=True)
class FramingResult:
    tunnel_us: float
    h2_us: float
    h2_novalidate_us: float

    @property
    def ratio(self) -> float:
        return self.h2_us / self.tunnel_us if self.tunnel_us else 0.0

    @property
    def ratio_novalidate(self) -> float:
        return self.h2_novalidate_us / self.tunnel_us if self.tunnel_us else 0.0


def measure(exchange: Callable[[], None], seconds: float, batch: int = 500) -> float:
    """Median CPU µs per exchange over batches run for about ``seconds``."""
    for _ in range(batch):
        exchange()
    per_batch: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or len(per_batch) < 5:
        start = time.process_time()
        for _ in range(batch):
            exchange()
        per_batch.append((time.process_time() - start) / batch * 1e6)
    return statistics.median(per_batch)


def run(seconds: float = 2.0) -> FramingResult:
    # Interleave: tunnel, h2, h2 without validation, repeated, so drift hits all three.
    samples: dict[str, list[float]] = {"tunnel": [], "h2": [], "h2nv": []}
    for _ in range(3):
        samples["tunnel"].append(measure(tunnel_pair(), seconds / 3))
        samples["h2"].append(measure(h2_pair(True), seconds / 3))
        samples["h2nv"].append(measure(h2_pair(False), seconds / 3))
    return FramingResult(
        statistics.median(samples["tunnel"]),
        statistics.median(samples["h2"]),
        statistics.median(samples["h2nv"]),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per variant and repeat")
    args = parser.parse_args(argv)
    result = run(args.seconds * 3)
    print(f"tunnel framing        {result.tunnel_us:8.1f} µs per exchange")
    print(f"h2 (defaults)         {result.h2_us:8.1f} µs per exchange  ({result.ratio:.2f}x)")
    print(f"h2 (no validation)    {result.h2_novalidate_us:8.1f} µs per exchange"
          f"  ({result.ratio_novalidate:.2f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What serving kubectl's requests over HTTP/2 costs in CPU: the ``h2`` package against
the gateway's own ``gateway.front.h2_protocol``.

``python -m bench.h2_requests [--requests N]``: a server connection receives a
kubectl-shaped GET (HEADERS, END_STREAM) and answers a 2 KB JSON object (HEADERS, DATA),
client (the ``h2`` package) and server in one process; only the server's share is timed,
the client's WINDOW_UPDATEs included. ``h2`` runs with header validation off. For scale:
the gateway's HTTP/1.1 client path (``gateway.front.connection``) costs ~31 µs per request with TLS
and sockets (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import h2.settings

from gateway.front.h2_protocol import RequestReceived, ServerConnection

REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"gw.example:443"),
    (b":path", b"/k8s/clusters/c-1/api/v1/namespaces/default/configmaps/x"),
    (b"authorization", b"Bearer token-abcde:" + b"x" * 54),
    (b"accept", b"application/json"),
    (b"user-agent", b"kubectl/v1.32.0 (linux/amd64) kubernetes/abc"),
]
ANSWER = [
    (b":status", b"200"),
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-cache, private"),
    (b"x-request-id", b"0123456789abcdef0123456789abcdef0123"),
    (b"content-length", b"2048"),
]
BODY = b"x" * 2048


def _client() -> h2.connection.H2Connection:
    """kubectl's side: large receive windows, as client-go sets them."""
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**24}
    )
    client.initiate_connection()
    client.increment_flow_control_window(2**30)
    return client


def _timed(
    requests: int,
    client: h2.connection.H2Connection,
    answer: Callable[[bytes], bytes],
    take_acks: Callable[[bytes], object],
) -> float:
    """Server-side CPU µs per request: ``answer`` turns a request's bytes into the
    answer's, ``take_acks`` reads the client's WINDOW_UPDATEs; the client is not timed."""
    spent = 0.0
    stream_id = 1
    for _ in range(requests):
        client.send_headers(stream_id, REQUEST, end_stream=True)
        wire = client.data_to_send()
        started = time.process_time()
        out = answer(wire)
        spent += time.process_time() - started
        received = 0
        for got in client.receive_data(out):
            if isinstance(got, h2.events.DataReceived):
                assert got.stream_id is not None
                received += len(got.data)
                client.acknowledge_received_data(got.flow_controlled_length, got.stream_id)
        if received != len(BODY):
            raise RuntimeError(f"the server answered {received} of {len(BODY)} bytes")
        acks = client.data_to_send()
        started = time.process_time()
        take_acks(acks)
        spent += time.process_time() - started
        stream_id += 2
    return 1e6 * spent / requests


def server_us_per_request(requests: int) -> float:
    client = _client()
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_inbound_headers=False,
            normalize_outbound_headers=False,
        )
    )
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())

    def answer(wire: bytes) -> bytes:
        for event in server.receive_data(wire):
            if isinstance(event, h2.events.RequestReceived):
                assert event.stream_id is not None
                server.send_headers(event.stream_id, ANSWER)
                server.send_data(event.stream_id, BODY, end_stream=True)
        return server.data_to_send()

    return _timed(requests, client, answer, server.receive_data)


def gateway_us_per_request(requests: int) -> float:
    """The same exchange with ``gateway.front.h2_protocol.ServerConnection`` as the server."""
    client = _client()
    server = ServerConnection()
    server.receive(client.data_to_send())
    client.receive_data(b"".join(server.data_to_send()))
    server.receive(client.data_to_send())
    fields = [(name, value) for name, value in ANSWER if name != b":status"]

    def answer(wire: bytes) -> bytes:
        for event in server.receive(wire):
            if type(event) is RequestReceived:
                server.send_headers(event.stream_id, 200, fields)
                server.send_data(event.stream_id, BODY, end_stream=True)
        return b"".join(server.data_to_send())

    return _timed(requests, client, answer, server.receive)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    package = server_us_per_request(args.requests)
    ours = gateway_us_per_request(args.requests)
    print(
        "server side, µs of CPU per request (HEADERS in; HEADERS and 2 KB of DATA out):\n"
        f"  h2 package (validation off): {package:.1f}\n"
        f"  gateway.front.h2_protocol:               {ours:.1f}  ({package / ours:.1f}x less)"
    )


if __name__ == "__main__":
    main()

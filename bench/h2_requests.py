"""What serving kubectl's requests over HTTP/2 would cost the gateway in CPU (h2 package).

``python -m bench.h2_requests [--requests N]``: an ``h2`` server connection receives a
kubectl-shaped GET (HEADERS, END_STREAM) and answers a 2 KB JSON object (HEADERS, DATA),
client and server in one process, header validation off; only the server's share is
timed. Compare with the gateway's HTTP/1.1 client path (``gateway.front``): ~31 µs per
request for parsing and answering in the same kind of measurement (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time

import h2.config
import h2.connection
import h2.events
import h2.settings

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


def server_us_per_request(requests: int) -> float:
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
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
    client.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**24}
    )
    client.initiate_connection()
    server.initiate_connection()
    client.increment_flow_control_window(2**30)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    spent = 0.0
    stream_id = 1
    for _ in range(requests):
        client.send_headers(stream_id, REQUEST, end_stream=True)
        wire = client.data_to_send()
        started = time.process_time()
        for event in server.receive_data(wire):
            if isinstance(event, h2.events.RequestReceived):
                assert event.stream_id is not None
                server.send_headers(event.stream_id, ANSWER)
                server.send_data(event.stream_id, BODY, end_stream=True)
        out = server.data_to_send()
        spent += time.process_time() - started
        for event in client.receive_data(out):
            if isinstance(event, h2.events.DataReceived):
                assert event.stream_id is not None
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        server.receive_data(client.data_to_send())
        stream_id += 2
    return 1e6 * spent / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    print(
        f"h2 server side: {server_us_per_request(args.requests):.1f} µs of CPU per request"
        " (HEADERS in; HEADERS and 2 KB of DATA out; validation off)"
    )


if __name__ == "__main__":
    main()

"""Watches over HTTP/2 go on without a task each (``gateway.proxy.parked``): many watches
add no task per watch, every one still gets its events, a reset one ends alone (its tunnel
stream and its accounting come back), and a client that stops reading holds the API
server back and then gets every event, in order, once it reads again."""

from __future__ import annotations

import json
import re
import ssl
import urllib.request

import h2.events
import h2.settings
import pytest

from tests.integration.conftest import World
from tests.integration.env import wait_until
from tests.integration.test_http2 import Client

pytestmark = [pytest.mark.integration, pytest.mark.request_path]

WATCHES = 60


def _metrics(world: World) -> dict[str, float]:
    """Each metric summed over its labels."""
    request = urllib.request.Request(
        world.gateway.url + "/metrics", headers={"Authorization": f"Bearer {world.admin.token}"}
    )
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    with urllib.request.urlopen(request, context=ctx, timeout=5) as resp:
        text = resp.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        found = re.match(r"([a-z_]+)(?:\{[^}]*\})? (\S+)$", line)
        if found:
            sums[found.group(1)] = sums.get(found.group(1), 0.0) + float(found.group(2))
    return sums


def _answered(client: Client, ids: list[int]) -> bool:
    if not all(i in client.statuses for i in ids):
        client.pump()
    return all(i in client.statuses for i in ids)


def _configmap(name: str, size: int = 0) -> bytes:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}
    if size:
        body["data"] = {"blob": "x" * size}
    return json.dumps(body).encode()


def _create(world: World, base: str, *bodies: bytes) -> None:
    """Create ConfigMaps, one after another, on a connection of their own."""
    writer = Client(world)
    try:
        for body in bodies:
            created = writer.start(
                "POST", f"{base}/api/v1/namespaces/default/configmaps", world.admin.token, body
            )
            writer.wait(created)
            assert writer.statuses[created] == 201, writer.bodies[created]
    finally:
        writer.close()


def test_watches_hold_no_task_each_and_each_ends_alone(world: World) -> None:
    base = f"/k8s/clusters/{world.cluster_id}"
    path = f"{base}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=0"
    client = Client(world)
    try:
        before = _metrics(world)
        watches = [client.start("GET", path, world.admin.token) for _ in range(WATCHES)]
        wait_until(lambda: _answered(client, watches), 15, "every watch answered")
        assert {client.statuses[w] for w in watches} == {200}
        during = _metrics(world)
        # Each open watch holds a tunnel stream, but no task of its own.
        assert during["herdgate_tunnel_streams_open"] >= WATCHES
        added_tasks = during["herdgate_event_loop_tasks"] - before["herdgate_event_loop_tasks"]
        assert added_tasks < WATCHES / 4, f"{added_tasks} tasks for {WATCHES} watches"

        _create(world, base, _configmap("parked-one"))
        wait_until(
            lambda: all(client.has(w, b"parked-one") for w in watches),
            15,
            "the event on every watch",
        )
        # Half of them reset by the client: they end alone, the others go on.
        gone, kept = watches[::2], watches[1::2]
        for w in gone:
            client.conn.reset_stream(w)
        client.sock.sendall(client.conn.data_to_send())
        _create(world, base, _configmap("parked-two"))
        wait_until(
            lambda: all(client.has(w, b"parked-two") for w in kept), 15, "the event on the others"
        )
        assert not any(b"parked-two" in client.bodies[w] for w in gone)
        assert not any(w in client.ended for w in kept)
        wait_until(
            lambda: (
                _metrics(world)["herdgate_tunnel_streams_open"]
                <= before["herdgate_tunnel_streams_open"] + len(kept)
            ),
            10,
            "the reset watches' tunnel streams closed",
        )
        finished = _metrics(world).get("herdgate_requests_total", 0) - before.get(
            "herdgate_requests_total", 0
        )
        assert finished >= len(gone)  # their accounting ended with them
    finally:
        client.close()
    wait_until(
        lambda: (
            _metrics(world)["herdgate_tunnel_streams_open"]
            <= before["herdgate_tunnel_streams_open"]
        ),
        10,
        "every watch's tunnel stream closed with the connection",
    )


def test_a_client_that_stops_reading_holds_the_watch_back_and_loses_nothing(
    world: World,
) -> None:
    """The client opens a small window and does not acknowledge what it gets: the gateway
    must stop taking the watch's bytes from the tunnel (credit held back) and give it back
    when the client reads again; every event then arrives, in order."""
    base = f"/k8s/clusters/{world.cluster_id}"
    client = Client(world)
    events = 100
    size = 12_000  # 1.2 MB in all: far more than the client's window or a tunnel window
    try:
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16_384})
        client.sock.sendall(client.conn.data_to_send())
        watch = client.start(
            "GET",
            f"{base}/api/v1/namespaces/default/configmaps?watch=1&labelSelector=&resourceVersion=0",
            world.admin.token,
        )
        received = bytearray()

        def pump(acknowledge: bool) -> None:
            data = client.sock.recv(65536)
            assert data, "the gateway closed the connection"
            for event in client.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    client.statuses[event.stream_id] = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == watch:
                    received.extend(event.data)
                    if acknowledge:
                        client.conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    raise AssertionError(f"the watch ended: {event}")
            client.sock.sendall(client.conn.data_to_send())

        while watch not in client.statuses:
            pump(acknowledge=False)
        names = [f"held-{i:03d}" for i in range(events)]
        _create(world, base, *(_configmap(name, size) for name in names))
        # Not reading: what arrived is at most the windows' worth.
        client.sock.settimeout(1.0)
        try:
            while True:
                pump(acknowledge=False)
        except TimeoutError:
            pass
        assert len(received) < events * size / 4, len(received)
        # Reading again: everything comes, in order, once.
        client.conn.acknowledge_received_data(len(received), watch)
        client.sock.sendall(client.conn.data_to_send())
        client.sock.settimeout(10.0)

        def seen() -> list[str]:
            lines = bytes(received).split(b"\n")
            return [
                json.loads(line)["object"]["metadata"]["name"]
                for line in lines[:-1]
                if b'"held-' in line
            ]

        while len(seen()) < events:
            pump(acknowledge=True)
        assert seen() == names
    finally:
        client.close()

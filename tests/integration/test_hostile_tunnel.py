"""The agents' door attacked: a rogue agent (``tests.integration.rogue``) speaks the
tunnel protocol by hand against a real gateway, and one user tries to take all of a
cluster's tunnel streams.

Each hostile tunnel must be closed (or refused) on its own: the world's real cluster
keeps being served throughout, which is asserted on what the stand-in API server
received. Memory under an agent that never reads: ``test_hostile_memory.py``.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import uuid
from collections.abc import Iterator

import pytest

from tests.integration import rogue
from tests.integration.conftest import World, start_world, stop_world
from tests.integration.env import wait_until
from tests.integration.test_hostile_requests import Answer, received, request

pytestmark = pytest.mark.integration

PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_TOO_LARGE = 1, 3, 5
MAX_STREAMS_PER_USER = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    config = f"tunnel:\n  max_streams_per_user: {MAX_STREAMS_PER_USER}\n"
    w = start_world(tmp_path_factory.mktemp("tunnel"), gateway_config=config)
    try:
        yield w
    finally:
        stop_world(w)


def rogue_cluster(world: World, name: str) -> tuple[str, str]:
    cluster = world.admin.post("/v3/clusters", {"name": name})
    reg = world.admin.post("/v3/clusterregistrationtokens", {"clusterId": cluster["id"]})
    return str(cluster["id"]), rogue.registration_token(str(reg["command"]))


def connected_rogue(world: World, token: str) -> rogue.RogueAgent:
    agent = rogue.RogueAgent(world.gateway.port, world.gateway.ca_file, token)
    assert agent.connect() == 101
    return agent


def real_cluster_served(world: World, times: int = 3) -> None:
    """The world's cluster answers, and the API server saw each request from its agent."""
    for _ in range(times):
        answer, probe = request(
            world,
            "GET",
            f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces",
            world.admin.token,
        )
        assert answer.status == 200, answer
        assert len(received(world, probe)) == 1


def connected(world: World, cluster_id: str) -> bool:
    """Whether the cluster's ``Connected`` condition is True (its state needs more: an API
    server that answers ``/readyz``, which a rogue agent does not have)."""
    cluster = world.admin.get(f"/v3/clusters/{cluster_id}")
    return any(c["type"] == "Connected" and c["status"] == "True" for c in cluster["conditions"])


@pytest.mark.parametrize(
    ("case", "token"),
    [("no token", ""), ("wrong token", "crt-nope:not-a-secret"), ("a user token", "USER")],
)
def test_a_tunnel_without_a_valid_registration_token_is_refused(
    world: World, case: str, token: str
) -> None:
    if token == "USER":
        token = world.admin.token
    agent = rogue.RogueAgent(world.gateway.port, world.gateway.ca_file, token)
    try:
        assert agent.connect() == 401, case
    finally:
        agent.close()
    real_cluster_served(world)


def test_a_registration_token_of_one_cluster_cannot_serve_another(world: World) -> None:
    """A's token presenting itself as B (the world's cluster) in every place an agent
    could name a cluster: the tunnel is A's, and B's requests still reach B's agent."""
    cluster_a, token_a = rogue_cluster(world, "imposter")
    agent = connected_rogue(world, token_a)
    claim = json.dumps(
        {"apiHost": "127.0.0.1:1", "authorization": "", "clusterId": world.cluster_id}
    )
    try:
        agent.handshake(metadata=claim.encode())
        wait_until(lambda: connected(world, cluster_a), 10, "A never connected")
        real_cluster_served(world, times=8)  # none of them went to the imposter
        # A's own controller probes A through this tunnel (as the agent's account, no
        # impersonation); a user's request to B would come impersonating the user.
        data = b"".join(f[3] for f in agent.frames(timeout=1.0) if f[0] == rogue.DATA)
        assert b"impersonate-user" not in data.lower()
    finally:
        agent.close()


@pytest.mark.parametrize(
    ("case", "data", "code"),
    [
        ("garbage before HELLO", b"\xff" * 64, FRAME_TOO_LARGE),
        ("DATA before HELLO", b"\x03" + b"\x00" * 9, PROTOCOL_ERROR),
        (
            "a control frame above 16 KiB",
            rogue.hello() + struct.pack(">BBII", rogue.INFO, 0, 0, 2**32 - 1),
            FRAME_TOO_LARGE,
        ),
        (
            "DATA above max_frame",
            rogue.hello() + struct.pack(">BBII", rogue.DATA, 0, 2, 2**31),
            FRAME_TOO_LARGE,
        ),
        (
            "DATA on a stream never opened",
            rogue.hello() + rogue.tunnel_frame(rogue.DATA, 0, 7, b"x"),
            PROTOCOL_ERROR,
        ),
        (
            "a malformed WINDOW",
            rogue.hello() + rogue.tunnel_frame(rogue.WINDOW, 0, 0, b"\0\0\0\0"),
            PROTOCOL_ERROR,
        ),
        ("a second HELLO", rogue.hello() + rogue.hello(), PROTOCOL_ERROR),
        (
            "HELLO metadata nested 16,000 deep",
            rogue.hello(metadata=b"[" * 16000),
            PROTOCOL_ERROR,
        ),
        ("HELLO metadata that is not JSON", rogue.hello(metadata=b"\x00\xff"), PROTOCOL_ERROR),
    ],
)
def test_garbage_and_oversized_frames_close_that_tunnel_only(
    world: World, case: str, data: bytes, code: int
) -> None:
    _, token = rogue_cluster(world, f"garbage-{uuid.uuid4().hex[:6]}")
    agent = connected_rogue(world, token)
    try:
        for kind, _, _, _ in agent.frames():
            if kind == rogue.HELLO:
                break
        agent.send(data)
        goaway = agent.goaway(timeout=10.0)
        assert agent.closed_by_gateway(timeout=10.0), case
    finally:
        agent.close()
    if goaway is not None:
        assert goaway[0] == code, (case, goaway)
    real_cluster_served(world)


def test_an_oversized_websocket_frame_closes_that_tunnel(world: World) -> None:
    _, token = rogue_cluster(world, "ws-too-big")
    agent = connected_rogue(world, token)
    try:
        agent.handshake()
        agent.send_raw(struct.pack(">BBQ", 0x82, 0x80 | 127, 64 * 1024 * 1024) + b"mask")
        close_codes = [flags for kind, flags, _, _ in agent.frames(timeout=10.0) if kind == -1]
        assert close_codes == [1009]
        assert agent.closed_by_gateway(timeout=10.0)
    finally:
        agent.close()
    real_cluster_served(world)


def test_thousands_of_streams_opened_by_an_agent_close_its_tunnel(world: World) -> None:
    """The gateway opens streams; an agent has none to open. Each OPEN is refused, and
    after 1,000 refusals the tunnel is closed."""
    _, token = rogue_cluster(world, "stream-flood")
    agent = connected_rogue(world, token)
    try:
        agent.handshake()
        batch = b"".join(rogue.tunnel_frame(rogue.OPEN, 0, 2 * i + 1) for i in range(5000))
        assert agent.try_send(batch)
        goaway = agent.goaway(timeout=10.0)
        assert agent.closed_by_gateway(timeout=10.0)
    finally:
        agent.close()
    assert goaway is not None and goaway[0] == PROTOCOL_ERROR, goaway
    assert "refused" in goaway[1]
    real_cluster_served(world)


# -- one user cannot take all of a cluster's tunnel streams ----------------------------


def _open_watch(world: World, token: str, probe: str) -> ssl.SSLSocket:
    """A watch held open (HTTP/1.1), once its answer has started."""
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", world.gateway.port), timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall(
        (
            f"GET /k8s/clusters/{world.cluster_id}/api/v1/namespaces/default/configmaps"
            f"?watch=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"X-Probe: {probe}\r\n\r\n"
        ).encode()
    )
    head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def test_one_user_at_the_stream_cap_does_not_stop_another(world: World) -> None:
    _, user_a = world.user("stream-hog", role="cluster-member")
    _, user_b = world.user("stream-neighbour", role="cluster-member")
    path = f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces"
    watches = [
        _open_watch(world, user_a.token, f"hog-{index}") for index in range(MAX_STREAMS_PER_USER)
    ]
    try:
        answer, probe = request(world, "GET", path, user_a.token)
        assert answer.status == 429, answer
        status = answer.json()
        assert status["kind"] == "Status" and status["reason"] == "TooManyRequests", status
        assert status["details"]["retryAfterSeconds"] >= 1
        assert b"\r\nretry-after: " in answer.head.lower()
        assert received(world, probe) == []  # refused before the API server

        answer_b, probe_b = request(world, "GET", path, user_b.token)
        assert answer_b.status == 200, answer_b
        assert len(received(world, probe_b)) == 1
    finally:
        for sock in watches:
            sock.close()

    def a_served_again() -> bool:
        again: Answer = request(world, "GET", path, user_a.token)[0]
        return again.status == 200

    wait_until(a_served_again, 10, "user A stays refused after closing the watches")


# -- cluster-state reports from a hostile agent (issue 20) -----------------------------


def reporting_rogue(world: World, name: str) -> tuple[str, rogue.RogueAgent]:
    """A rogue agent that offers cluster-state reports, once the gateway has asked it."""
    cluster_id, token = rogue_cluster(world, name)
    agent = connected_rogue(world, token)
    metadata = json.dumps({"apiHost": "127.0.0.1:1", "authorization": "", "clusterState": 1})
    agent.handshake(metadata=metadata.encode())
    for kind, _, _, payload in agent.frames(timeout=15.0):
        if kind == rogue.INFO and b"clusterStateWanted" in payload:
            assert json.loads(payload)["clusterStateWanted"]["interval"] > 0
            return cluster_id, agent
    agent.close()
    raise AssertionError("the gateway never asked the reporting agent for reports")


def info(report: object) -> bytes:
    return rogue.tunnel_frame(rogue.INFO, 0, 0, json.dumps({"clusterState": report}).encode())


def node(name: str) -> dict[str, object]:
    return {
        "name": name,
        "roles": [],
        "addresses": [],
        "kubeletVersion": "v1",
        "ready": "True",
        "capacity": {},
    }


def test_malformed_reports_are_ignored_and_a_lie_stays_in_its_own_cluster(world: World) -> None:
    cluster_id, agent = reporting_rogue(world, "liar")
    try:
        bad: list[object] = [
            "not an object",
            {"full": "yes"},
            {"full": True, "last": True, "nodes": {"n": {"name": "other"}}},
            {"full": True, "last": True, "nodes": {"x" * 300: None}},
            {"full": True, "last": True, "namespaces": {"ns": 7}},
            {"full": True, "last": True, "ready": {"ok": "true"}},
            {"full": True, "last": True, "version": {"v": ["a"]}},
            {"full": True, "last": True, "listed": ["pods"]},
            {"full": True, "last": True, "nodes": {"n": {**node("n"), "roles": ["r"] * 100}}},
        ]
        for report in bad:
            assert agent.try_send(info(report))
        nested = b'{"clusterState": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        assert agent.try_send(rogue.tunnel_frame(rogue.INFO, 0, 0, nested))
        # Then a well-formed lie: it shows, in this cluster only.
        lie = {
            "full": True,
            "last": True,
            "ready": {"ok": True, "reason": "APIServerReady", "message": "/readyz: ok"},
            "version": {"gitVersion": "v9.9.9"},
            "listed": ["nodes", "namespaces"],
            "nodes": {"fake-node": node("fake-node")},
            "namespaces": {"fake-ns": ""},
        }
        assert agent.try_send(info(lie))

        def shown() -> bool:
            cluster = world.admin.get(f"/v3/clusters/{cluster_id}")
            return cluster["state"] == "active" and [n["name"] for n in cluster["nodes"]] == [
                "fake-node"
            ]

        wait_until(shown, 15, "the well-formed report never showed")
        assert world.admin.get(f"/v3/clusters/{cluster_id}")["version"]["gitVersion"] == "v9.9.9"
        assert connected(world, cluster_id)  # the malformed ones did not cost the tunnel
        real = world.admin.get(f"/v3/clusters/{world.cluster_id}")
        assert "fake-node" not in [n["name"] for n in real["nodes"]]
        assert real["version"]["gitVersion"] != "v9.9.9"
    finally:
        agent.close()
    real_cluster_served(world)


def test_more_nodes_than_the_cap_are_cut_off(world: World) -> None:
    cluster_id, agent = reporting_rogue(world, "many-nodes")
    try:
        names = [f"n-{i:05d}" for i in range(5100)]
        chunks = [names[i : i + 80] for i in range(0, len(names), 80)]
        for index, chunk in enumerate(chunks):
            report: dict[str, object] = {"nodes": {n: node(n) for n in chunk}}
            if index == 0:
                report.update(full=True, listed=["nodes"], ready={"ok": True})
            if index == len(chunks) - 1:
                report["last"] = True
            assert agent.try_send(info(report))

        def count() -> int:
            return int(world.admin.get(f"/v3/clusters/{cluster_id}")["nodeCount"])

        wait_until(lambda: count() == 5000, 30, "the node cap did not hold")
    finally:
        agent.close()
    real_cluster_served(world)


def test_an_agent_that_floods_reports_loses_its_tunnel(world: World) -> None:
    cluster_id, agent = reporting_rogue(world, "report-flood")
    try:
        heartbeat = info({"last": True})
        batch = heartbeat * 200
        sent = 0
        while sent < 3000 and agent.try_send(batch):
            sent += 200
        goaway = agent.goaway(timeout=10.0)
        assert agent.closed_by_gateway(timeout=10.0)
    finally:
        agent.close()
    assert goaway is not None and goaway[0] == PROTOCOL_ERROR, goaway
    assert "too fast" in goaway[1]
    wait_until(lambda: not connected(world, cluster_id), 15, "the flooding agent stays listed")
    real_cluster_served(world)

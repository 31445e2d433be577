"""``kubectl --as`` through the real proxy in one process: the front, the handler, a
tunnel session over an in-memory transport to a fake API server that answers
``SelfSubjectAccessReview``s by a rule and every other request with ``200 {}``. What the
fake API server received is the assertion."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from config.schema import GatewaySettings
from gateway.clusters.tunnels import STREAM_QUOTA, TUNNELS, AgentInfo, AgentLink
from gateway.front.connection import Front
from gateway.identity import hashing
from gateway.identity.directory import Directory
from gateway.operations.app import build_app
from gateway.runtime import Runtime
from gateway.store.records import BINDING, CLUSTER, USER, Binding, Cluster, User
from gateway.store.sqlite import SQLiteStore
from tunnel.errors import TunnelError
from tunnel.protocol import Side
from tunnel.session import Session
from tunnel.streams import TunnelStream
from tunnel.transport import MemoryTransport

CLUSTER_ID = "c-as"
PODS = f"/k8s/clusters/{CLUSTER_ID}/api/v1/namespaces/default/pods"
REVIEWS = b"/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


@dataclass
class FakeApiServer:
    """Answers reviews with ``decide(caller, attributes)``; records every head."""

    decide: Callable[[str, dict[str, Any]], bool]
    heads: list[list[bytes]] = field(default_factory=list)
    session: Session | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def on_stream(self, stream: TunnelStream) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(self.serve(stream)))

    def requests(self) -> list[list[bytes]]:
        return [h for h in self.heads if REVIEWS not in h[0]]

    def reviews(self) -> list[list[bytes]]:
        return [h for h in self.heads if REVIEWS in h[0]]

    async def serve(self, stream: TunnelStream) -> None:
        assert self.session is not None
        self.session.accept(stream)
        with contextlib.suppress(TunnelError):
            buffer = b""
            for _ in range(1000):
                while b"\r\n\r\n" not in buffer:
                    data = await stream.read()
                    if not data:
                        return
                    buffer += data
                raw, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = raw.split(b"\r\n")
                self.heads.append(lines)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += await stream.read()
                body, buffer = buffer[:length], buffer[length:]
                if REVIEWS in lines[0]:
                    review = json.loads(body)
                    caller = next(
                        v.strip().decode()
                        for n, _, v in (ln.partition(b":") for ln in lines[1:])
                        if n.lower() == b"impersonate-user"
                    )
                    attrs = review["spec"]["resourceAttributes"]
                    review["status"] = {"allowed": self.decide(caller, attrs)}
                    answer, status = json.dumps(review).encode(), b"201 Created"
                else:
                    answer, status = b"{}", b"200 OK"
                await stream.write(
                    b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (status, len(answer), answer)
                )


class Client:
    """A client connection's transport: collects the answer's bytes."""

    def __init__(self) -> None:
        self.data = b""
        self.arrived = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.data += bytes(data)
        self.arrived.set()

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.write(part)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    async def answer(self) -> tuple[int, dict[str, Any]]:
        for _ in range(200):
            head, sep, body = self.data.partition(b"\r\n\r\n")
            if sep:
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                if len(body) >= length:
                    return int(head.split(b" ")[1]), json.loads(body[:length])
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 10)
        raise AssertionError(f"no whole answer: {self.data[:300]!r}")


@dataclass
class World:
    front: Front
    server: FakeApiServer
    tokens: dict[str, str]
    link: AgentLink
    app: Any


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = await SQLiteStore(tmp_path / "db").open()
    directory = Directory(store)
    await directory.load()
    now = time.time()
    await directory.put(CLUSTER, Cluster(CLUSTER_ID, "as", now))
    tokens = {}
    people = [("owner", "cluster-owner", False), ("member", "cluster-member", False)]
    for name, role, admin in [*people, ("admin", None, True)]:
        user = User(f"u-{name}", name, hashing.hash_password("x" * 12), now, admin=admin)
        await directory.put(USER, user)
        if role:
            await directory.put(BINDING, Binding(f"b-{name}", CLUSTER_ID, role, now, user.id))
        _, tokens[name] = await directory.issue_token(
            user, None, "kubeconfig", cluster_id=CLUSTER_ID
        )
    # The cluster's RBAC: the owner may impersonate anyone but system:masters; the member
    # nobody; the admin only the user ops-bot.
    rules = {
        "u-owner": lambda a: a["name"] != "system:masters",
        "u-admin": lambda a: a["resource"] == "users" and a["name"] == "ops-bot",
    }
    server = FakeApiServer(lambda caller, attrs: rules.get(caller, lambda a: False)(attrs))
    app = build_app(GatewaySettings(), directory, Runtime("https://gw.test", "CA", "test"))
    a, b = MemoryTransport.pair()
    agent = Session(a, Side.CLIENT, on_stream=server.on_stream)
    gateway = Session(b, Side.SERVER)
    server.session = agent
    await asyncio.gather(agent.handshake(), gateway.handshake())
    agent.start()
    gateway.start()
    info = AgentInfo(api_host=b"api:443", authorization=b"Bearer agent")
    link = AgentLink(CLUSTER_ID, gateway, info, "127.0.0.1")
    app[TUNNELS].add(link)
    try:
        yield World(Front(app, asyncio.Protocol), server, tokens, link, app)
    finally:
        await gateway.close()
        await agent.close()
        for task in server.tasks:
            task.cancel()
        await store.close()


async def send(world: World, who: str, impersonate: list[tuple[str, str]]) -> tuple[int, Any]:
    lines = [f"GET {PODS} HTTP/1.1", "Host: gw.test", f"Authorization: Bearer {world.tokens[who]}"]
    lines += [f"{name}: {value}" for name, value in impersonate]
    conn, client = world.front(), Client()
    conn.connection_made(client)  # type: ignore[arg-type]
    conn.data_received(("\r\n".join(lines) + "\r\n\r\n").encode())
    return await client.answer()


def fields(head: list[bytes], name: bytes) -> list[bytes]:
    return [v.strip() for n, _, v in (ln.partition(b":") for ln in head[1:]) if n.lower() == name]


async def test_allowed_as_is_forwarded_with_the_clients_fields_only(world: World) -> None:
    status, _ = await send(
        world, "owner", [("Impersonate-User", "jane"), ("Impersonate-Group", "devs")]
    )
    assert status == 200
    [head] = world.server.requests()
    assert fields(head, b"impersonate-user") == [b"jane"]
    assert fields(head, b"impersonate-group") == [b"devs"]
    assert fields(head, b"authorization") == [b"Bearer agent"]
    reviews = world.server.reviews()
    assert len(reviews) == 2
    for review in reviews:  # asked as the owner, by the owner's role
        assert fields(review, b"impersonate-user") == [b"u-owner"]
        assert b"herdgate:cluster-owner" in fields(review, b"impersonate-group")


async def test_a_denial_forwards_nothing(world: World) -> None:
    status, body = await send(world, "member", [("Impersonate-User", "jane")])
    assert status == 403
    assert body["message"] == (
        'users "jane" is forbidden: User "u-member" cannot impersonate resource "users" '
        'in API group "" at the cluster scope'
    )
    assert world.server.requests() == []


async def test_an_admin_follows_the_clusters_rule(world: World) -> None:
    masters = [("Impersonate-User", "ops-bot"), ("Impersonate-Group", "system:masters")]
    status, body = await send(world, "admin", masters)
    assert status == 403 and body["message"].startswith('groups "system:masters" is forbidden')
    status, _ = await send(world, "admin", masters[:1])
    assert status == 200
    assert [fields(h, b"impersonate-user") for h in world.server.requests()] == [[b"ops-bot"]]


async def test_malformed_impersonation_is_reviewed_then_refused(world: World) -> None:
    status, _ = await send(world, "owner", [("Impersonate-Group", "devs")])
    assert status == 400
    status, _ = await send(world, "member", [("Impersonate-Group", "devs")])
    assert status == 403
    assert world.server.requests() == []


async def test_answers_are_cached(world: World) -> None:
    for _ in range(3):
        status, _ = await send(world, "owner", [("Impersonate-User", "jane")])
        assert status == 200
    assert len(world.server.reviews()) == 1
    assert len(world.server.requests()) == 3


async def test_reviews_count_towards_the_callers_share_of_streams(world: World) -> None:
    quota = world.app[STREAM_QUOTA]
    limit = quota.limit_for(world.link.session.peer_max_streams)
    key = (CLUSTER_ID, "u-owner")
    for _ in range(limit):  # watches holding every stream of the owner's share
        assert quota.take(key, limit)
    status, body = await send(world, "owner", [("Impersonate-User", "jane")])
    assert status == 429, body
    assert world.server.heads == []
    for _ in range(limit):
        quota.give(key)
    status, _ = await send(world, "owner", [("Impersonate-User", "jane")])
    assert status == 200
    assert quota.held(CLUSTER_ID, "u-owner") == 0

"""Registration tokens in process: expiry, rotation, revocation, the cap on agents per
cluster, and agents disconnected when their token goes, in this process and in another
one sharing the store. Agents here are real tunnel sessions dialled to the app."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from config.schema import GatewaySettings, RegistrationSettings
from gateway.clusters.tunnels import TUNNELS
from gateway.identity import hashing
from gateway.identity.directory import Directory
from gateway.operations.app import build_app
from gateway.runtime import Runtime
from gateway.store.records import USER, User
from gateway.store.sqlite import SQLiteStore
from tests.component.front_server import FrontServer
from tunnel import wsconn
from tunnel.protocol import Side
from tunnel.session import Session
from tunnel.websocket import HandshakeError

PASSWORD = "admin-password-123"
_HASH = hashing.hash_password(PASSWORD)
MAX_AGENTS = 3


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Gw:
    client: TestClient[Any, Any]
    directory: Directory
    clock: Clock
    admin: dict[str, str]

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        resp = await self.client.request(method, path, json=body, headers=self.admin)
        return resp.status, await resp.json()


async def _gateway(store: SQLiteStore, clock: Clock, admin_token: str = "") -> Gw:
    directory = Directory(store, clock=clock)
    await directory.load()
    if "u-admin" not in directory.users:
        await directory.put(
            USER,
            User("u-admin", "admin", _HASH, clock.now, admin=True,
                 principal_ids=("local://u-admin",)),
        )  # fmt: skip
    settings = dataclasses.replace(
        GatewaySettings(), registration=RegistrationSettings(max_agents_per_cluster=MAX_AGENTS)
    )
    app = build_app(settings, directory, Runtime("https://gw.test:8443", "CA", "test"))
    client = TestClient(FrontServer(app))
    await client.start_server()
    if not admin_token:
        resp = await client.post(
            "/v3-public/localProviders/local?action=login",
            json={"username": "admin", "password": PASSWORD},
        )
        admin_token = (await resp.json())["token"]
    return Gw(client, directory, clock, {"Authorization": f"Bearer {admin_token}"})


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[Gw, Gw]]:
    """Two gateway processes' worth (two directories, two apps) on one SQLite store."""
    clock = Clock()
    stores = [await SQLiteStore(tmp_path / "db").open() for _ in range(2)]
    a = await _gateway(stores[0], clock)
    b = await _gateway(stores[1], clock, a.admin["Authorization"].split()[1])
    try:
        yield a, b
    finally:
        for gw in (a, b):
            await gw.client.close()
        for store in stores:
            await store.close()


@pytest.fixture
async def gw(two: tuple[Gw, Gw]) -> Gw:
    return two[0]


async def _cluster(gw: Gw) -> str:
    status, cluster = await gw.call("POST", "/v3/clusters", {"name": "edge"})
    assert status == 201, cluster
    return str(cluster["id"])


async def _registration(gw: Gw, cluster_id: str, **extra: Any) -> dict[str, Any]:
    status, reg = await gw.call(
        "POST", "/v3/clusterregistrationtokens", {"clusterId": cluster_id, **extra}
    )
    assert status == 201, reg
    return dict(reg)


async def _agent(gw: Gw, token: str, agent_id: str = "") -> Session:
    url = str(gw.client.make_url("/v3/connect"))
    headers = {"Authorization": f"Bearer {token}"}
    if agent_id:
        headers["X-Herdgate-Agent-Id"] = agent_id
    conn = await wsconn.dial(url, headers, None, 5)
    metadata = json.dumps({"apiHost": "127.0.0.1:1", "authorization": "Bearer sa"}).encode()
    session = Session(conn, Side.CLIENT, metadata=metadata, name="test-agent")
    await session.handshake()
    session.start()
    return session


async def _closed_within(session: Session, timeout_s: float) -> None:
    await asyncio.wait_for(session.wait_closed(), timeout_s)


async def test_a_token_is_shown_once_and_never_again(gw: Gw) -> None:
    cluster_id = await _cluster(gw)
    reg = await _registration(gw, cluster_id)
    secret = reg["token"]
    assert secret.startswith("crt-") and secret in reg["command"]
    _, listed = await gw.call("GET", "/v3/clusterregistrationtokens")
    _, one = await gw.call("GET", f"/v3/clusterregistrationtokens/{reg['id']}")
    for view in (*listed["data"], one):
        assert "token" not in view and "command" not in view
        assert secret.split(":")[1] not in json.dumps(view)
    stored = await gw.directory.store.list("registrationtokens")
    assert secret.split(":")[1] not in json.dumps(stored)  # only its hash is kept


async def test_an_expired_token_no_longer_connects(gw: Gw) -> None:
    cluster_id = await _cluster(gw)
    reg = await _registration(gw, cluster_id, ttl=300)  # milliseconds
    assert reg["expiresAt"] is not None and reg["expired"] is False
    session = await _agent(gw, reg["token"])
    # The expiry timer fires 0.3 s on (real time) and checks the gateway's clock.
    gw.clock.now += 1
    await _closed_within(session, 5)
    with pytest.raises(HandshakeError) as refused:
        await _agent(gw, reg["token"])
    assert refused.value.status == 401
    _, view = await gw.call("GET", f"/v3/clusterregistrationtokens/{reg['id']}")
    assert view["expired"] is True


async def test_expires_at_and_bad_expiries(gw: Gw) -> None:
    cluster_id = await _cluster(gw)
    reg = await _registration(gw, cluster_id, expiresAt="2030-01-01T00:00:00Z")
    assert reg["expiresAt"] == "2030-01-01T00:00:00Z"
    reg = await _registration(gw, cluster_id, ttl="10m")
    assert reg["expiresAt"] == "2027-01-15T08:10:00Z"
    for bad in (
        {"ttl": -5},
        {"ttl": "soon"},
        {"ttl": 1e300},
        {"expiresAt": "2020-01-01T00:00:00Z"},  # past
        {"expiresAt": "2030-01-01T00:00:00"},  # no zone
        {"expiresAt": 12},
        {"ttl": "1h", "expiresAt": "2030-01-01T00:00:00Z"},
    ):
        status, body = await gw.call(
            "POST", "/v3/clusterregistrationtokens", {"clusterId": cluster_id, **bad}
        )
        assert status == 422 and body["type"] == "error", (bad, body)


async def test_rotation_keeps_the_old_token_for_its_grace_then_disconnects_it(gw: Gw) -> None:
    cluster_id = await _cluster(gw)
    old = await _registration(gw, cluster_id)
    session = await _agent(gw, old["token"])
    status, new = await gw.call(
        "POST",
        f"/v3/clusterregistrationtokens/{old['id']}?action=rotate",
        {"previousValidFor": 500},
    )
    assert status == 201 and new["token"] != old["token"] and new["command"]
    _, old_view = await gw.call("GET", f"/v3/clusterregistrationtokens/{old['id']}")
    assert old_view["rotatedTo"] == new["id"] and old_view["expiresAt"] is not None
    # Within the grace both connect; the old one's agents are cut when it ends.
    newer = await _agent(gw, new["token"])
    second = await _agent(gw, old["token"])
    gw.clock.now += 1
    await _closed_within(session, 5)
    await _closed_within(second, 5)
    assert not newer.is_closed
    with pytest.raises(HandshakeError):
        await _agent(gw, old["token"])
    await newer.close()


async def test_rotation_without_grace_revokes_at_once(gw: Gw) -> None:
    cluster_id = await _cluster(gw)
    old = await _registration(gw, cluster_id)
    session = await _agent(gw, old["token"])
    status, new = await gw.call("POST", f"/v3/clusterregistrationtokens/{old['id']}?action=rotate")
    assert status == 201
    await _closed_within(session, 5)
    status, _ = await gw.call("GET", f"/v3/clusterregistrationtokens/{old['id']}")
    assert status == 404
    await (await _agent(gw, new["token"])).close()


async def test_revocation_disconnects_agents_in_every_process(two: tuple[Gw, Gw]) -> None:
    a, b = two
    cluster_id = await _cluster(a)
    reg = await _registration(a, cluster_id)
    b.directory.catch_up()
    on_a = await _agent(a, reg["token"])
    on_b = await _agent(b, reg["token"])
    status, _ = await a.call("POST", f"/v3/clusterregistrationtokens/{reg['id']}?action=revoke")
    assert status == 200
    await _closed_within(on_a, 5)
    # b learns of it through the store's change feed (its background follower).
    await _closed_within(on_b, 10)
    with pytest.raises(HandshakeError) as refused:
        await _agent(b, reg["token"])
    assert refused.value.status == 401


async def test_agents_per_cluster_are_capped(gw: Gw) -> None:
    cluster_id = await _cluster(gw)
    reg = await _registration(gw, cluster_id)
    sessions = [await _agent(gw, reg["token"]) for _ in range(MAX_AGENTS)]
    with pytest.raises(HandshakeError) as refused:
        await _agent(gw, reg["token"])
    assert refused.value.status == 429
    assert "max_agents_per_cluster" in str(refused.value)
    assert refused.value.headers["retry-after"] == "30"
    # Another cluster is not affected; a freed place can be taken again.
    other = await _registration(gw, (await gw.call("POST", "/v3/clusters", {"name": "b"}))[1]["id"])
    extra = await _agent(gw, other["token"])
    await sessions[0].close()
    for _ in range(100):
        if gw.client.app is not None and len(gw.client.app[TUNNELS].links(cluster_id)) < MAX_AGENTS:
            break
        await asyncio.sleep(0.02)
    sessions[0] = await _agent(gw, reg["token"])
    for session in (*sessions, extra):
        await session.close()


async def test_an_agents_second_tunnel_to_a_process_is_not_a_new_agent(gw: Gw) -> None:
    """With every place taken, an agent that lands again on a process it holds (its dial
    to "another replica" reached the same one) gets its HELLO and is closed as a
    duplicate, not a 429 that would make it wait; it never counts twice."""
    cluster_id = await _cluster(gw)
    reg = await _registration(gw, cluster_id)
    sessions = [await _agent(gw, reg["token"], f"agent-{i}") for i in range(MAX_AGENTS)]
    again = await _agent(gw, reg["token"], "agent-0")
    await _closed_within(again, 5)
    assert gw.client.app is not None
    assert len(gw.client.app[TUNNELS].links(cluster_id)) == MAX_AGENTS
    with pytest.raises(HandshakeError) as refused:
        await _agent(gw, reg["token"], "agent-new")
    assert refused.value.status == 429
    for session in sessions:
        await session.close()


async def test_agents_are_accepted_at_a_paced_rate(gw: Gw, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight agents at once with the pace at four a second: four 101s at once, the others
    over the next second, none refused; with a shorter bound on the wait, those whose
    turn is too far off get 503 and a ``Retry-After`` instead of waiting."""
    from gateway.clusters import tunnels

    monkeypatch.setattr(tunnels, "ACCEPT_FLOOR_PER_S", 4.0)
    tokens = []
    for i in range(4):
        status, cluster = await gw.call("POST", "/v3/clusters", {"name": f"paced-{i}"})
        assert status == 201, cluster
        tokens.append((await _registration(gw, str(cluster["id"])))["token"])
    loop = asyncio.get_running_loop()
    started = loop.time()
    done: list[float] = []

    async def timed(token: str) -> Session:
        session = await _agent(gw, token)
        done.append(loop.time() - started)
        return session

    sessions = await asyncio.gather(*(timed(t) for t in tokens * 2))
    done.sort()
    assert len(sessions) == 8
    assert done[3] < 0.5 and 0.6 < done[-1] < 5.0
    for session in sessions:
        await session.close()

    monkeypatch.setattr(tunnels, "ACCEPT_MAX_WAIT_S", 0.3)
    await asyncio.sleep(1.0)  # the bucket full again
    outcomes = await asyncio.gather(*(_agent(gw, t) for t in tokens * 2), return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, HandshakeError)]
    assert refused and all(o.status == 503 for o in refused)
    assert all(o.headers["retry-after"] == "1" for o in refused)
    for outcome in outcomes:
        if isinstance(outcome, Session):
            await outcome.close()

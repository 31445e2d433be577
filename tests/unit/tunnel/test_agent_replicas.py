"""The agent's dial loop against gateways that list their replicas' own addresses, list
some without one, or list nothing (an older gateway): whom it dials, through which
address, and that a replica that fails does not hold up the others. The dials are fakes
that answer as a gateway would (``Agent._dial``); the loop, its waits and the list's
parsing are the agent's own, on virtual time."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import tunnel.agent as agent_module
from tests.fakes.loop_clock import virtual_time
from tests.unit.tunnel.test_agent_tasks import FakeWebSocket, an_agent
from tunnel.agent import Agent
from tunnel.credentials import Upstream
from tunnel.websocket import HandshakeError


class FakeSession:
    """A tunnel session after the WebSocket: its HELLO is the fake gateway's."""

    def __init__(self, hello: dict[str, Any]) -> None:
        self.hello = hello
        self.is_usable = True
        self.goaway = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handshake(self) -> bytes:
        return json.dumps(self.hello).encode()

    def start(self) -> None:
        pass

    def send_info(self, message: bytes) -> None:
        pass

    async def wait_closed(self) -> str:
        await self.closed
        return "closed"

    async def close(self, *args: Any) -> None:
        self.is_usable = False
        if not self.closed.done():
            self.closed.set_result(None)


@dataclass
class Landed(FakeWebSocket):
    replica: str


@dataclass
class FakeGateway:
    """Replicas behind a balancer that always lands on ``pinned`` (haproxy's ``balance
    source``) unless ``spread`` says otherwise; each replica also at its own address."""

    replicas: dict[str, str]  # id -> advertised URL ("" = none)
    list_sent: bool = True
    pinned: str = "a"
    spread: Callable[[int], str] | None = None
    down: set[str] = field(default_factory=set)
    full: set[str] = field(default_factory=set)
    """Replicas that answer 429 with ``Retry-After: 30`` (the cluster has its agents)."""
    log: list[tuple[str, str]] = field(default_factory=list)
    """(how, where it landed): how is "balancer" or the address dialled."""

    def hello(self, replica: str) -> dict[str, Any]:
        data: dict[str, Any] = {"replicaId": replica, "replicas": len(self.replicas)}
        if self.list_sent:
            data["replicaList"] = [{"id": i, "url": u} for i, u in self.replicas.items()]
        return data

    def install(self, agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
        async def dial(
            url: str,
            headers: Any,
            context: Any,
            timeout_s: float,
            connect_to: tuple[str, int] | None = None,
        ) -> Landed:
            await asyncio.sleep(0.01)
            assert url == "https://gw.test/v3/connect"  # the public name, always
            if connect_to is None:
                n = sum(1 for how, _ in self.log if how == "balancer")
                landed = self.spread(n) if self.spread else self.pinned
                self.log.append(("balancer", landed))
                return Landed(landed)
            how = f"{connect_to[0]}:{connect_to[1]}"
            owners = [i for i, u in self.replicas.items() if u.endswith(how)]
            if not owners or owners[0] in self.down:
                self.log.append((how, "refused"))
                raise ConnectionRefusedError(111, "Connection refused")
            if owners[0] in self.full:
                self.log.append((how, "429"))
                raise HandshakeError(429, "HTTP 429 Too Many Requests", {"retry-after": "30"})
            self.log.append((how, owners[0]))
            return Landed(owners[0])

        monkeypatch.setattr(agent_module.wsconn, "dial", dial)
        monkeypatch.setattr(
            agent, "_session", lambda ws, upstream: FakeSession(self.hello(ws.replica))
        )

    def direct(self, replica: str) -> str:
        return self.replicas[replica].removeprefix("https://")


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[Callable[[Callable[[], bool]], Any]]:
    """Run the agent on virtual time; yields ``until(condition)``, which waits (at most
    120 virtual seconds) for it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def until(done: Callable[[], bool]) -> None:
        deadline = loop.time() + 120.0
        while not done():
            assert loop.time() < deadline, "not within 120 s"
            await asyncio.sleep(0.05)

    with virtual_time():
        run = asyncio.create_task(agent.run(stop))
        try:
            yield until
        finally:
            stop.set()
            await asyncio.wait_for(run, 60)


URLS = {"a": "https://10.0.0.1:8443", "b": "https://10.0.0.2:8443", "c": "https://10.0.0.3:8443"}


async def test_a_pinning_balancer_first_then_each_replica_at_its_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = an_agent(monkeypatch, Upstream("api.test", 443, None, None))
    gateway = FakeGateway(dict(URLS))
    gateway.install(agent, monkeypatch)
    async with running(agent) as until:
        await until(lambda: len(agent.tunnels) == 3)
        assert set(agent.tunnels) == {"a", "b", "c"}
    assert gateway.log[0] == ("balancer", "a")
    assert sorted(gateway.log[1:]) == [(gateway.direct("b"), "b"), (gateway.direct("c"), "c")]
    assert agent.stats.dials["new"] == 1
    assert agent.stats.direct_dials["new"] == 2


async def test_a_dead_replica_is_retried_at_its_own_pace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = an_agent(monkeypatch, Upstream("api.test", 443, None, None))
    gateway = FakeGateway(dict(URLS), down={"b"})
    gateway.install(agent, monkeypatch)
    b = gateway.direct("b")
    async with running(agent) as until:
        await until(lambda: sum(1 for how, _ in gateway.log if how == b) >= 5)
        assert set(agent.tunnels) == {"a", "c"}  # c was not held up by b
        assert [h for h, _ in gateway.log].count("balancer") == 1  # the balancer only once
        assert agent.stats.direct_dials["failed"] >= 5
        gateway.down.clear()
        await until(lambda: len(agent.tunnels) == 3)
        assert set(agent.tunnels) == {"a", "b", "c"}


async def test_a_replica_without_an_address_is_reached_through_the_balancer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = an_agent(monkeypatch, Upstream("api.test", 443, None, None))
    # The balancer spreads: a, a, a, c (the third replica is found by landing there).
    gateway = FakeGateway({**URLS, "c": ""}, spread=lambda n: "c" if n >= 3 else "a")
    gateway.install(agent, monkeypatch)
    async with running(agent) as until:
        await until(lambda: len(agent.tunnels) == 3)
        assert set(agent.tunnels) == {"a", "b", "c"}
    assert (gateway.direct("b"), "b") in gateway.log  # b at its address
    assert gateway.log[-1] == ("balancer", "c")  # c through the balancer
    assert agent.stats.dials["duplicate"] >= 1


async def test_an_older_gateway_without_a_list(monkeypatch: pytest.MonkeyPatch) -> None:
    agent = an_agent(monkeypatch, Upstream("api.test", 443, None, None))
    order = ["a", "a", "b", "a", "c"]
    gateway = FakeGateway(dict(URLS), list_sent=False, spread=lambda n: order[min(n, 4)])
    gateway.install(agent, monkeypatch)
    async with running(agent) as until:
        await until(lambda: len(agent.tunnels) == 3)
        assert set(agent.tunnels) == {"a", "b", "c"}
    assert {how for how, _ in gateway.log} == {"balancer"}  # the count alone: as before


async def test_info_names_a_returning_replica_and_the_agent_dials_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = an_agent(monkeypatch, Upstream("api.test", 443, None, None))
    gateway = FakeGateway({"a": URLS["a"], "b": URLS["b"]})
    gateway.install(agent, monkeypatch)
    async with running(agent) as until:
        await until(lambda: len(agent.tunnels) == 2)
        # Replica b dies; its address refuses until it comes back as b2, which the
        # survivors' INFO announces.
        gateway.down.add("b")
        await agent.tunnels["b"].session.close()
        await until(lambda: "b" not in agent.tunnels)
        await until(lambda: any(landed == "refused" for _, landed in gateway.log))
        gateway.replicas = {"a": URLS["a"], "b2": URLS["b"]}
        agent._on_info(json.dumps(gateway.hello("a")).encode())
        await until(lambda: "b2" in agent.tunnels)
        assert set(agent.tunnels) == {"a", "b2"}
    assert gateway.log[-1] == (gateway.direct("b2"), "b2")


async def test_a_replica_that_refuses_for_now_is_asked_again_after_its_retry_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = an_agent(monkeypatch, Upstream("api.test", 443, None, None))
    gateway = FakeGateway(dict(URLS), full={"b"})
    gateway.install(agent, monkeypatch)
    b = gateway.direct("b")
    loop = asyncio.get_running_loop()
    async with running(agent) as until:
        await until(lambda: (b, "429") in gateway.log and "c" in agent.tunnels)
        refused_at = loop.time()
        gateway.full.clear()
        await until(lambda: "b" in agent.tunnels)
        assert loop.time() - refused_at >= 29  # Retry-After: 30 kept
    assert [how for how, _ in gateway.log].count(b) == 2
    assert [how for how, _ in gateway.log].count("balancer") == 1

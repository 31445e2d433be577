"""bench.agents' retry events: when a failed dial began, not when its line was logged.

The agents' restart test and the bench count failed dials "once the gateway is up" by
this time; a process running many agents logs a dial refused just before the listener
came up only after the others had their turn, possibly after that moment."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

import bench.agents as bench_agents
import tunnel.agent as agent_module
from config.schema import AgentSettings
from tunnel.agent import Agent
from tunnel.credentials import Upstream

SLOW_S = 0.3
"""How long the failing connect takes here (the busy loop, in a real run)."""


async def test_a_retry_event_carries_when_the_failed_dial_began(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def refused(*args: object, **kwargs: object) -> None:
        await asyncio.sleep(SLOW_S)
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9)")

    monkeypatch.setattr(agent_module.wsconn, "dial", refused)
    agents: dict[int, Agent] = {}
    handler = bench_agents._Retries(agents)
    logger = logging.getLogger("tunnel.agent")
    logger.addHandler(handler)
    try:
        bench_agents.AGENT_INDEX.set(3)
        agent = agents[3] = Agent(AgentSettings(server="https://127.0.0.1:9"), "crt-x:y")
        began = time.time()
        outcome = await agent._dial(None, Upstream("api.test", 443, None, None))
        logged = time.time()
    finally:
        logger.removeHandler(handler)
    assert outcome == "failed"
    (event,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert event["e"] == "retry" and event["a"] == 3 and event["delay"] > 0
    assert began <= event["t"] < began + SLOW_S / 2 < logged - SLOW_S / 2

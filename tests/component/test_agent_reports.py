"""An agent's reports as the gateway's ``AgentLink`` takes them: the constant heartbeat is
known without parsing JSON and tells the listener what parsing it would have."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import gateway.clusters.tunnels as tunnels_module
from gateway.clusters.tunnels import AgentInfo, AgentLink
from tunnel.cluster_state import HEARTBEAT, REPORT_KEY, Applied, State, encode_reports
from tunnel.protocol import Side
from tunnel.session import Session
from tunnel.transport import MemoryTransport


async def test_a_heartbeat_reaches_the_listener_without_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = MemoryTransport.pair()
    agent, gateway = Session(a, Side.CLIENT), Session(b, Side.SERVER)
    await asyncio.gather(agent.handshake(), gateway.handshake())
    agent.start()
    gateway.start()
    link = AgentLink(
        "c-1", gateway, AgentInfo(api_host=b"api:443", authorization=b"Bearer agent"), "127.0.0.1"
    )
    told: list[Applied] = []
    link.want_reports(lambda _link, applied: told.append(applied), 10.0, 60.0)
    try:
        [snapshot] = encode_reports(None, State())
        link.on_info(snapshot)
        assert link.reported is not None and link.reported.complete
        assert told[-1].changed
        loads = json.loads
        parsed: list[Any] = []

        def counting(raw: Any, *args: Any, **kwargs: Any) -> Any:
            parsed.append(raw)
            return loads(raw, *args, **kwargs)

        monkeypatch.setattr(tunnels_module.json, "loads", counting)
        before = link.last_report
        await asyncio.sleep(0.01)
        link.on_info(HEARTBEAT)
        assert parsed == []  # known without parsing
        assert told[-1] == Applied() and len(told) == 2
        assert link.last_report > before  # the agent is alive
        # Anything else is parsed as before: an unknown key is ignored.
        link.on_info(json.dumps({REPORT_KEY: {"last": True}, "x": 1}).encode())
        assert len(parsed) == 1 and told[-1] == Applied() and len(told) == 3
    finally:
        await gateway.close()
        await agent.close()

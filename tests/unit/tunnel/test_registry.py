from __future__ import annotations

from dataclasses import dataclass

import pytest

from tunnel.errors import NoAgentSession
from tunnel.registry import TunnelRegistry


@dataclass(eq=False)
class FakeLink:
    cluster_id: str
    is_node_agent: bool = False
    is_usable: bool = True
    load: int = 0


def test_prefers_cluster_agents_then_least_loaded() -> None:
    reg: TunnelRegistry[FakeLink] = TunnelRegistry()
    seen: list[tuple[str, int]] = []
    reg.on_change(lambda c, n: seen.append((c, n)))
    node = FakeLink("c-1", is_node_agent=True)
    busy = FakeLink("c-1", load=5)
    idle = FakeLink("c-1", load=1)
    for link in (node, busy, idle):
        reg.add(link)
    assert reg.pick("c-1") is idle
    idle.is_usable = False
    assert reg.pick("c-1") is busy
    reg.remove(busy)
    reg.remove(idle)
    assert reg.pick("c-1") is node
    reg.remove(node)
    reg.remove(node)  # twice is harmless
    with pytest.raises(NoAgentSession):
        reg.pick("c-1")
    assert seen == [("c-1", 1), ("c-1", 2), ("c-1", 3), ("c-1", 2), ("c-1", 1), ("c-1", 0)]

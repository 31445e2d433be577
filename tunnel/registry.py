"""Which live tunnels serve which cluster (bookkeeping; ``wait_for`` is the one await).

Several agents may serve one cluster: the cluster agent and node agents as
fallback. Requests go to a cluster agent when one is connected, otherwise to a node
agent; among equals, to the one with the fewest open streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from tunnel.errors import NoAgentSession


class Link(Protocol):
    @property
    def cluster_id(self) -> str: ...

    @property
    def is_node_agent(self) -> bool: ...

    @property
    def is_usable(self) -> bool: ...

    @property
    def load(self) -> int: ...


L = TypeVar("L", bound=Link)


class TunnelRegistry(Generic[L]):
    def __init__(self) -> None:
        self._links: dict[str, list[L]] = {}
        self._listeners: list[Callable[[str, int], None]] = []
        self._removal_listeners: list[Callable[[L], None]] = []
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    def on_change(self, listener: Callable[[str, int], None]) -> None:
        """Call ``listener(cluster_id, live_link_count)`` whenever links come or go."""
        self._listeners.append(listener)

    def on_remove(self, listener: Callable[[L], None]) -> None:
        """Call ``listener(link)`` when a link is removed, before it is gone."""
        self._removal_listeners.append(listener)

    def add(self, link: L) -> None:
        links = self._links.setdefault(link.cluster_id, [])
        links.append(link)
        self._notify(link.cluster_id, len(links))

    def remove(self, link: L) -> None:
        links = self._links.get(link.cluster_id)
        if links is None or link not in links:
            return
        for listener in self._removal_listeners:
            listener(link)
        links.remove(link)
        if not links:
            del self._links[link.cluster_id]
        self._notify(link.cluster_id, len(links))

    def links(self, cluster_id: str) -> list[L]:
        return list(self._links.get(cluster_id, ()))

    def count(self, cluster_id: str) -> int:
        return len(self._links.get(cluster_id, ()))

    def pick(self, cluster_id: str) -> L:
        best: L | None = None
        for link in self._links.get(cluster_id, ()):
            if not link.is_usable:
                continue
            if best is None or (link.is_node_agent, link.load) < (best.is_node_agent, best.load):
                best = link
        if best is None:
            raise NoAgentSession(cluster_id)
        return best

    async def wait_for(self, cluster_id: str, timeout_s: float) -> L:
        """A usable link, waiting up to ``timeout_s`` for one to connect."""
        try:
            return self.pick(cluster_id)
        except NoAgentSession:
            pass
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (remaining := deadline - loop.time()) > 0:
            waiter = loop.create_future()
            self._waiters.setdefault(cluster_id, []).append(waiter)
            try:
                async with asyncio.timeout(remaining):
                    await waiter
            except TimeoutError:
                break
            finally:
                waiters = self._waiters.get(cluster_id, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._waiters.pop(cluster_id, None)
            try:
                return self.pick(cluster_id)
            except NoAgentSession:
                continue
        return self.pick(cluster_id)

    def all_links(self) -> list[L]:
        return [link for links in self._links.values() for link in links]

    def _notify(self, cluster_id: str, count: int) -> None:
        for listener in self._listeners:
            listener(cluster_id, count)
        for waiter in self._waiters.get(cluster_id, ()):
            if not waiter.done():
                waiter.set_result(None)

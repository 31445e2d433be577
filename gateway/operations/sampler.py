"""Figures kept elsewhere as plain integers (tunnels' bytes and streams, the OIDC token
cache), copied into the metrics when they are scraped and when a tunnel closes."""

from __future__ import annotations

from aiohttp import web

from gateway.clusters.tunnels import AgentLink
from gateway.identity.providers.registry import Providers
from gateway.telemetry import metrics
from tunnel.registry import TunnelRegistry


class Sampler:
    """Copies figures kept elsewhere as plain integers into the metrics."""

    def __init__(self, tunnels: TunnelRegistry[AgentLink], providers: Providers) -> None:
        self._tunnels = tunnels
        self._providers = providers
        self._seen: dict[AgentLink, tuple[int, int]] = {}
        self._cache_hits = 0
        self._cache_misses = 0
        tunnels.on_change(self._tunnel_count)
        tunnels.on_remove(self.link_closed)

    def _tunnel_count(self, cluster_id: str, count: int) -> None:
        metrics.TUNNELS_OPEN.labels(cluster_id).set(count)

    def _take_bytes(self, link: AgentLink) -> tuple[int, int]:
        """Bytes this link moved since it was last looked at."""
        session = link.session
        sent, received = session.bytes_sent, session.bytes_received
        last_sent, last_received = self._seen.get(link, (0, 0))
        self._seen[link] = (sent, received)
        return sent - last_sent, received - last_received

    def link_closed(self, link: AgentLink) -> None:
        """Count a closing tunnel's last bytes."""
        sent, received = self._take_bytes(link)
        self._seen.pop(link, None)
        metrics.add(metrics.BYTES_SENT, sent)
        metrics.add(metrics.BYTES_RECEIVED, received)

    def sample(self) -> None:
        streams = sent = received = 0
        take = self._take_bytes
        for link in self._tunnels.all_links():
            link_sent, link_received = take(link)
            sent += link_sent
            received += link_received
            streams += link.session.stream_count
        metrics.add(metrics.BYTES_SENT, sent)
        metrics.add(metrics.BYTES_RECEIVED, received)
        metrics.STREAMS_OPEN.set(streams)
        oidc = self._providers.oidc
        if oidc is not None:
            hits, misses = oidc.stats.cache_hits, oidc.stats.verifications
            if hits < self._cache_hits or misses < self._cache_misses:
                self._cache_hits = self._cache_misses = 0  # a reload made a new provider
            metrics.TOKEN_CACHE.labels("hit").inc(hits - self._cache_hits)
            metrics.TOKEN_CACHE.labels("miss").inc(misses - self._cache_misses)
            self._cache_hits, self._cache_misses = hits, misses


SAMPLER = web.AppKey("sampler", Sampler)

"""Which gateway replicas are live and where each one can be dialled (sans I/O).

A gateway replica tells an agent, in its HELLO metadata and in INFO updates, the live
replicas' ids and each one's own address (its ``replica.advertise_url``)::

    {"replicaId": "a", "replicas": 3,
     "replicaList": [{"id": "a", "url": "https://10.0.0.5:8443"},
                     {"id": "b", "url": "https://10.0.0.6:8443"},
                     {"id": "c", "url": ""}]}

``replicas`` (the count) is what agents before this list read, and is still sent: an
older agent ignores ``replicaList`` and keeps dialling the gateway's one address; a
newer agent talking to an older gateway finds no list (:func:`parse` gives None) and
does the same. So the list needs no new frame and no new protocol version: HELLO and
INFO carry JSON objects whose unknown keys both sides ignore. An entry whose ``url`` is
empty (a replica listening on a wildcard address without ``replica.advertise_url``) is
reached through the gateway's address, as before.

The agent dials a listed replica it lacks at that replica's host and port, with the same
TLS settings, server name and ``Host`` as the gateway's public URL (so the gateway's
certificate, issued for that name, verifies; the CA stays pinned). Only the host and the
port of an advertised URL are used.

:class:`DirectDials` decides which replica to dial next and when a replica that failed
is tried again (its own back-off, so a replica that died does not hold up the others).
"""

from __future__ import annotations

import json
import math
import random
import re
import urllib.parse
from collections.abc import Collection, Iterable
from dataclasses import dataclass

LIST_KEY = "replicaList"
COUNT_KEY = "replicas"
SPREAD_KEY = "reconnectSpreadS"
"""In the INFO a stopping gateway sends just before its GOAWAY: over how many seconds its
agents should spread their reconnections (it holds more tunnels than its successor can
take in the agents' own ``reconnect_spread``)."""
MAX_SPREAD_S = 120.0
"""The longest spread an agent takes from a gateway."""
MAX_REPLICAS = 64
"""Entries beyond this are ignored (a gateway has a handful of replicas)."""
MAX_ID_CHARS = 128
MAX_URL_CHARS = 512
LIST_BUDGET_BYTES = 12 * 1024
"""The encoded list stays within this, so HELLO and INFO stay within the tunnel's 16 KiB
for a control frame: past it, addresses are left out from the end (those replicas are
then reached through the gateway's address)."""
ADVERTISE_MAX_CHARS = 256
_HOST = re.compile(r"[A-Za-z0-9._:-]+")
_ID = re.compile(r"[\x21-\x7e]+")
WILDCARDS = frozenset({"0.0.0.0", "::", "[::]", ""})

RETRY_INITIAL_S = 0.5
"""A direct dial that failed is tried again after this, doubling..."""
RETRY_MAX_S = 8.0
"""...up to this (a dead replica is dropped from the list within the gateway's 15 s)."""
RETRY_AFTER_MAX_S = 300.0
"""The longest ``Retry-After`` of a replica's refusal that is kept."""
HELD_INITIAL_S = 0.1
"""A direct dial that landed on a replica already held (workers sharing one address)
is tried again after this, doubling up to ``HELD_MAX_S``."""
HELD_MAX_S = 1.6


@dataclass(frozen=True, slots=True)
class ReplicaAddress:
    id: str
    url: str = ""
    """``https://host:port`` where this replica itself listens; empty: none of its own."""

    @property
    def address(self) -> tuple[str, int] | None:
        """The host and port to dial, or None when the replica has no address."""
        return dial_address(self.url) if self.url else None


def dial_address(url: str) -> tuple[str, int] | None:
    """Host and port of an advertised URL, or None when it is not a usable one."""
    if not url or len(url) > MAX_URL_CHARS:
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "wss", "http", "ws"):
        return None
    host = parts.hostname or ""
    if parts.username is not None or parts.password is not None:
        return None
    if not _HOST.fullmatch(host) or host in WILDCARDS:
        return None
    if port is None:
        port = 443 if scheme in ("https", "wss") else 80
    if not 1 <= port <= 65535:
        return None
    return host, port


def check_advertise_url(url: str) -> str:
    """The setting ``replica.advertise_url`` made canonical (``https://host:port``);
    ValueError saying what is wrong with it."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if parts.scheme.lower() != "https":
        raise ValueError("expected an https:// URL (the gateway's own listener)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a user name or password does not belong in it")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("only https://HOST:PORT (no path, query or fragment)")
    host = parts.hostname or ""
    if not host or not _HOST.fullmatch(host):
        raise ValueError("no host name or address")
    if host in WILDCARDS:
        raise ValueError(f"{host} is not an address agents can dial")
    canonical = replica_url(host, port or 443)
    if len(canonical) > ADVERTISE_MAX_CHARS:
        raise ValueError(f"longer than {ADVERTISE_MAX_CHARS} characters")
    return canonical


def replica_url(host: str, port: int) -> str:
    """``https://host:port`` (an IPv6 address in brackets)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"https://{shown}:{port}"


def encode(
    replicas: Iterable[ReplicaAddress], budget: int = LIST_BUDGET_BYTES
) -> list[dict[str, str]]:
    """The ``replicaList`` value (for the gateway's HELLO and INFO metadata), at most
    ``MAX_REPLICAS`` entries and ``budget`` bytes of JSON (addresses dropped from the
    end until it fits)."""
    out = [{"id": r.id, "url": r.url} for r in replicas][:MAX_REPLICAS]
    size = len(json.dumps(out))
    for entry in reversed(out):
        if size <= budget:
            break
        size -= len(json.dumps(entry["url"])) - 2
        entry["url"] = ""
    return out


def parse_spread(value: object) -> float | None:
    """``reconnectSpreadS`` as seconds within [0, ``MAX_SPREAD_S``]; None if absent or not
    a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        return None
    return min(max(float(value), 0.0), MAX_SPREAD_S)


def parse(value: object) -> tuple[ReplicaAddress, ...] | None:
    """The ``replicaList`` value of a HELLO or INFO (already decoded from JSON).

    None when it is not a list (absent: a gateway from before the list). Entries that are
    not an object with a usable ``id`` are skipped; an unusable ``url`` becomes empty (the
    replica is then reached through the gateway's address); a repeated id keeps its first
    entry; at most ``MAX_REPLICAS`` entries. Never raises.
    """
    if not isinstance(value, list):
        return None
    out: list[ReplicaAddress] = []
    seen: set[str] = set()
    for item in value:
        if len(out) >= MAX_REPLICAS:
            break
        if not isinstance(item, dict):
            continue
        rid = item.get("id")
        if not isinstance(rid, str) or len(rid) > MAX_ID_CHARS or not _ID.fullmatch(rid):
            continue
        if rid in seen:
            continue
        url = item.get("url")
        usable = isinstance(url, str) and dial_address(url) is not None
        seen.add(rid)
        out.append(ReplicaAddress(rid, url if usable and isinstance(url, str) else ""))
    return tuple(out)


@dataclass
class _Pace:
    ready_at: float = 0.0
    failures: int = 0
    held: int = 0


class DirectDials:
    """Which listed replica the agent dials next, directly, and when.

    Each replica has its own pace: a failed dial waits ``RETRY_INITIAL_S`` doubling to
    ``RETRY_MAX_S``, one that reached a replica already held (several workers behind one
    address) ``HELD_INITIAL_S`` doubling to ``HELD_MAX_S``, each wait uniform in
    [ceiling/2, ceiling]. A replica first seen in an update (one that just started or
    came back) is dialled at a random moment within ``spread_s`` so that all agents do
    not handshake with it in the same instant.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._pace: dict[str, _Pace] = {}
        self.known: tuple[ReplicaAddress, ...] = ()

    def update(self, replicas: tuple[ReplicaAddress, ...], now: float, spread_s: float) -> None:
        """The gateway's latest list; replicas no longer listed are forgotten."""
        listed = {r.id for r in replicas}
        for rid in list(self._pace):
            if rid not in listed:
                del self._pace[rid]
        for r in replicas:
            if r.id not in self._pace:
                delay = self._rng.uniform(0, spread_s) if spread_s > 0 else 0.0
                self._pace[r.id] = _Pace(ready_at=now + delay)
        self.known = replicas

    def lacking(self, held: Collection[str]) -> list[ReplicaAddress]:
        return [r for r in self.known if r.id not in held]

    def next(self, held: Collection[str], now: float) -> ReplicaAddress | None:
        """A listed replica with an address, not held, whose wait is over (the one
        waiting longest first); None when there is none."""
        ready = [
            r
            for r in self.lacking(held)
            if r.address is not None and self._pace_of(r.id).ready_at <= now
        ]
        if not ready:
            return None
        return min(ready, key=lambda r: (self._pace_of(r.id).ready_at, r.id))

    def wait_s(self, held: Collection[str], now: float) -> float | None:
        """How long until a replica can be dialled directly; None when the agent should
        dial the gateway's address instead: no list, or a lacking replica without an
        address of its own (only the gateway's address can reach it)."""
        lacking = self.lacking(held)
        if not lacking or any(r.address is None for r in lacking):
            return None
        return max(0.0, min(self._pace_of(r.id).ready_at for r in lacking) - now)

    def failed(self, replica_id: str, now: float, at_least_s: float = 0.0) -> float:
        """A direct dial failed; the wait before this replica is tried again (at least
        ``at_least_s``, a refusal's ``Retry-After``, capped at ``RETRY_AFTER_MAX_S``)."""
        pace = self._pace_of(replica_id)
        pace.failures += 1
        ceiling = min(RETRY_MAX_S, RETRY_INITIAL_S * 2 ** (pace.failures - 1))
        delay = max(self._rng.uniform(ceiling / 2, ceiling), min(at_least_s, RETRY_AFTER_MAX_S))
        pace.ready_at = now + delay
        return delay

    def landed_on_held(self, replica_id: str, now: float) -> float:
        """The dial reached a replica already held; the wait before trying again."""
        pace = self._pace_of(replica_id)
        pace.held += 1
        ceiling = min(HELD_MAX_S, HELD_INITIAL_S * 2 ** (pace.held - 1))
        delay = self._rng.uniform(ceiling / 2, ceiling)
        pace.ready_at = now + delay
        return delay

    def connected(self, replica_id: str) -> None:
        """A tunnel to this replica is up: its next loss is dialled again at once."""
        self._pace[replica_id] = _Pace()

    def failures(self, replica_id: str) -> int:
        return self._pace_of(replica_id).failures

    def _pace_of(self, replica_id: str) -> _Pace:
        pace = self._pace.get(replica_id)
        if pace is None:
            pace = self._pace[replica_id] = _Pace()
        return pace

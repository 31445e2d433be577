"""Each cluster's health as a state machine: events in, conditions and state out (pure).

Conditions are Kubernetes-style (``type``, ``status`` True/False/Unknown, ``reason``,
``message``, ``lastTransitionTime``, which changes only when the status does):

- ``Connected``: an agent tunnel is up (the message names the cluster and node agents);
- ``Ready``: the API server answers ``/readyz`` with ok (otherwise the failure's reason
  and message); Unknown while no tunnel can reach it;
- ``Synced``: set by the access sync when it last succeeded or failed
  (``ClusterHealth.set_condition``; through ``ClusterControllers.set_condition``);
- ``ACESynced``, only on a cluster with direct access (the authorized cluster endpoint):
  set by the ACE record sync the same way, removed when direct access is turned off.

The overall ``state``: ``pending`` until an agent has ever connected (and until the first
probe after that), ``active`` while Connected and Ready are True, ``unavailable``
otherwise (no tunnel, or the API server not ready), ``active`` again when both are back.

Node and namespace summaries from watch events (``WatchTable``, ``node_summary``), the
per-cluster request budget (``TokenBucket``) and the error backoff (``Backoff``) live in
``tunnel.cluster_state`` (the agent uses them too, to report its cluster's state) and are
named here as well. The controller that feeds all this, from the agent's reports or from
its own probes and watches through the tunnel, is ``gateway.controllers.cluster_controller``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.store.records import iso

CONNECTED = "Connected"
READY = "Ready"
SYNCED = "Synced"
ACE_SYNCED = "ACESynced"
CONDITION_TYPES = (CONNECTED, READY, SYNCED)
"""Every cluster shows these."""
OPTIONAL_CONDITIONS = (ACE_SYNCED,)
"""Shown once set, until removed."""
SET_ELSEWHERE = (SYNCED, ACE_SYNCED)
"""Set by other controllers (``ClusterControllers.set_condition``), not by this machine."""
_KNOWN = (*CONDITION_TYPES, *OPTIONAL_CONDITIONS)
STATUSES = ("True", "False", "Unknown")

PENDING = "pending"
ACTIVE = "active"
UNAVAILABLE = "unavailable"
STATES = (PENDING, ACTIVE, UNAVAILABLE)

MAX_MESSAGE = 1024

Doc = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str = "Unknown"
    reason: str = ""
    message: str = ""
    last_transition: float | None = None

    def doc(self) -> Doc:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": iso(self.last_transition),
        }


@dataclass(frozen=True, slots=True)
class AgentView:
    """One connected agent, as the cluster's view shows it."""

    node: str
    """The node name of a node agent; "" for the cluster agent."""
    replica: str
    connected_since: float
    remote: str

    @property
    def role(self) -> str:
        return "node" if self.node else "cluster"

    def doc(self) -> Doc:
        return {
            "node": self.node,
            "role": self.role,
            "replica": self.replica,
            "connectedSince": iso(self.connected_since),
            "remote": self.remote,
        }


def _agents_message(agents: tuple[AgentView, ...]) -> str:
    cluster = sum(1 for a in agents if not a.node)
    nodes = sorted({a.node for a in agents if a.node})
    parts = []
    if cluster:
        parts.append(f"{cluster} cluster agent tunnel{'s' if cluster != 1 else ''}")
    if nodes:
        parts.append(
            "node agents on " + ", ".join(nodes[:20]) + (" ..." if len(nodes) > 20 else "")
        )
    return "; ".join(parts)


class ClusterHealth:
    """The state machine of one cluster. Every method takes ``now`` (wall-clock seconds,
    for ``lastTransitionTime``) and returns whether anything visible changed."""

    def __init__(self, cluster_id: str, ever_connected: bool = False) -> None:
        self.cluster_id = cluster_id
        self.conditions: dict[str, Condition] = {t: Condition(t) for t in CONDITION_TYPES}
        self.ever_connected = ever_connected
        self.probed = False
        """Whether ``/readyz`` has been answered (or failed) since the tunnel came up."""
        self.ever_active = False
        self.agents: tuple[AgentView, ...] = ()
        self.version: Doc | None = None

    @classmethod
    def from_status(cls, cluster_id: str, status: Mapping[str, Any] | None) -> ClusterHealth:
        """Resume from a stored status (the conditions keep their transition times)."""
        health = cls(cluster_id)
        if not status:
            return health
        health.ever_connected = status.get("state") in (ACTIVE, UNAVAILABLE)
        health.ever_active = health.ever_connected
        for raw in status.get("conditions") or ():
            if not isinstance(raw, Mapping) or raw.get("type") not in _KNOWN:
                continue
            kind = str(raw["type"])
            health.conditions[kind] = Condition(
                kind,
                str(raw.get("status")) if raw.get("status") in STATUSES else "Unknown",
                str(raw.get("reason") or ""),
                str(raw.get("message") or ""),
                _parse_iso(raw.get("lastTransitionTime")),
            )
        version = status.get("version")
        health.version = dict(version) if isinstance(version, Mapping) else None
        return health

    # -- events ---------------------------------------------------------------------------

    def set_condition(
        self, kind: str, status: bool | None, reason: str, message: str, now: float
    ) -> bool:
        """Set a condition (``status`` None: Unknown); the transition time moves only when
        the status does."""
        if kind not in _KNOWN:
            raise ValueError(f"unknown condition {kind!r}")
        text = "Unknown" if status is None else ("True" if status else "False")
        message = message[:MAX_MESSAGE]
        old = self.conditions.get(kind)
        if old is not None and (old.status, old.reason, old.message) == (text, reason, message):
            return False
        since = old.last_transition if old is not None and old.status == text else now
        self.conditions[kind] = Condition(kind, text, reason, message, since)
        return self._note(True)

    def remove_condition(self, kind: str) -> bool:
        """Remove an optional condition; whether it was there."""
        if kind not in OPTIONAL_CONDITIONS:
            raise ValueError(f"{kind!r} is not an optional condition")
        return self.conditions.pop(kind, None) is not None

    def agents_changed(self, agents: tuple[AgentView, ...], now: float) -> bool:
        agents = tuple(sorted(agents, key=lambda a: (a.node, a.remote, a.connected_since)))
        changed = agents != self.agents
        self.agents = agents
        if agents:
            self.ever_connected = True
            changed |= self.set_condition(
                CONNECTED, True, "AgentConnected", _agents_message(agents), now
            )
        else:
            changed |= self.set_condition(
                CONNECTED, False, "NoAgentTunnel", "no agent tunnel is connected", now
            )
            changed |= self.set_condition(
                READY,
                None,
                "NoAgentTunnel",
                "the API server cannot be reached without a tunnel",
                now,
            )
            self.probed = False
        return self._note(changed)

    def probe_ok(self, now: float) -> bool:
        self.probed = True
        return self.set_condition(READY, True, "APIServerReady", "/readyz: ok", now)

    def probe_failed(self, reason: str, message: str, now: float) -> bool:
        self.probed = True
        return self.set_condition(READY, False, reason or "APIServerNotReady", message, now)

    def version_seen(self, version: Doc) -> bool:
        changed = version != self.version
        self.version = version
        return changed

    # -- what it shows --------------------------------------------------------------------

    @property
    def state(self) -> str:
        if not self.ever_connected:
            return PENDING
        connected = self.conditions[CONNECTED].status == "True"
        ready = self.conditions[READY].status
        if connected and ready == "True":
            return ACTIVE
        if connected and not self.probed and not self.ever_active:
            return PENDING  # the first agent is in; its first probe is on the way
        return UNAVAILABLE

    def _note(self, changed: bool) -> bool:
        if self.state == ACTIVE:
            self.ever_active = True
        return changed

    def condition_docs(self) -> list[Doc]:
        return [self.conditions[t].doc() for t in _KNOWN if t in self.conditions]


def _parse_iso(value: Any) -> float | None:
    import datetime as dt

    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def status_doc(
    health: ClusterHealth,
    nodes: list[Doc],
    namespaces: list[str],
    holder: str,
    generation: int,
) -> Doc:
    """The ``clusterstatus`` document, without its write time (compared for changes)."""
    return {
        "id": health.cluster_id,
        "state": health.state,
        "conditions": health.condition_docs(),
        "version": health.version,
        "nodes": nodes,
        "namespaces": namespaces,
        "agents": [a.doc() for a in health.agents],
        "holder": holder,
        "generation": generation,
    }


def same_status(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> bool:
    """Whether two status documents show the same (the write time aside)."""
    if a is None:
        return False
    strip = {k: v for k, v in a.items() if k != "updated"}
    other = {k: v for k, v in b.items() if k != "updated"}
    return json.dumps(strip, sort_keys=True) == json.dumps(other, sort_keys=True)

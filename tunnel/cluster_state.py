"""A cluster's state as its agent reports it to the gateway (pure: no I/O, no clock).

The agent sits next to its API server: it probes ``/readyz`` and ``/version`` and
follows nodes and namespaces itself (``tunnel.cluster_watch``), and tells the gateway
what changed in INFO frames (``REPORT_KEY``), so an idle cluster costs the gateway no
request and no watch. This module is what both ends share: the node summary and the
namespace's project (what the cluster view and the access sync show and use), the
table a list and watch feed (``WatchTable``), the report's wire form (``encode_reports``,
``parse_report``) and the gateway's copy of a reported state (``ReportedState``).

Negotiation: an agent able to report says ``CAPABILITY_KEY`` in its HELLO metadata; the
gateway asks one agent of a cluster for reports with an INFO ``WANT_KEY`` (the probe
interval and heartbeat), and stops with ``WANT_KEY: null``. On being asked, the agent
sends a full snapshot, then only changes, and an empty report as a heartbeat when
nothing changed for a while. An agent without the capability is probed and watched by
the gateway as before.

A report is a JSON object in one or more INFO frames (each at most
``frames.MAX_CONTROL_PAYLOAD``): a full snapshot or a change set is cut into chunks;
``full`` marks a snapshot's first chunk, ``last`` the final chunk of either. Every
field and list is capped (``clean_summary``), and the gateway keeps at most
``MAX_NODES`` nodes and ``MAX_NAMESPACES`` namespaces (more are dropped and the state
says ``truncated``). Malformed input is a ``ReportError``, never a crash.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tunnel.frames import MAX_CONTROL_PAYLOAD

CAPABILITY_KEY = "clusterState"
"""In the agent's HELLO metadata: the report format it speaks (``FORMAT``)."""
WANT_KEY = "clusterStateWanted"
"""In an INFO from the gateway: ``{"interval": s, "heartbeat": s}`` (send reports) or
null (stop)."""
REPORT_KEY = "clusterState"
"""In an INFO from the agent: one chunk of a report."""
FORMAT = 1

MAX_NODES = 5000
MAX_NAMESPACES = 10000
MAX_NAME = 253
"""A Kubernetes object name (DNS subdomain) is at most this long."""
MAX_TEXT = 1024
"""Reasons, messages, projects, versions' values, addresses."""
MAX_LIST = 16
"""Roles and addresses of a node."""
MAX_VERSION_KEYS = 16
MAX_NAME_BYTES = 1024
"""Sizes in bytes are of the JSON text (escapes counted): a name,"""
MAX_SUMMARY_BYTES = 4096
"""a node summary (``node_summary`` trims to fit),"""
MAX_PROJECT_BYTES = 1024
"""a namespace's project,"""
MAX_REASON_BYTES = 256
MAX_MESSAGE_BYTES = 1024
"""``/readyz``'s reason and message (``readiness`` trims to fit),"""
MAX_VERSION_BYTES = 2048
"""and ``/version``'s answer (``fit_version`` keeps what fits). So a report's head and
any one item fit one INFO frame together."""
MAX_REPORT_BYTES = MAX_CONTROL_PAYLOAD - 256
"""A chunk's JSON, so that it fits one INFO frame."""
MIN_INTERVAL_S = 1.0
"""The agent sends at most one report (snapshot or changes) per this; the gateway's
budget (``REPORT_RATE``) assumes it."""
REPORT_RATE = 20.0
"""INFO frames a second an agent may send on average (the gateway closes the tunnel of
one that sends more)..."""
REPORT_BURST = 1000.0
"""...and at once: a full snapshot of ``MAX_NODES`` nodes and ``MAX_NAMESPACES``
namespaces fits with room."""
NODES = "nodes"
NAMESPACES = "namespaces"
KINDS = (NODES, NAMESPACES)

ROLE_LABEL_PREFIX = "node-role.kubernetes.io/"
PROJECT_ANNOTATION = "field.cattle.io/projectId"
"""A namespace's project (Rancher's form: ``<cluster id>:<project id>``)."""

Doc = dict[str, Any]


class ReportError(ValueError):
    """A report that is not one: wrong JSON, wrong types, over a limit."""


# -- what is summarised ------------------------------------------------------------------


def _mapping(value: Any) -> Mapping[str, Any]:
    """A JSON object as a mapping with string keys (JSON keys are strings), else empty."""
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return value
    return {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def fit(text: str, max_bytes: int) -> str:
    """``text`` cut so that its JSON is at most ``max_bytes``."""
    while _size(text) > max_bytes:
        text = text[: len(text) * 3 // 4]
    return text


def readiness(ok: bool, reason: str = "", message: str = "") -> Readiness:
    """A ``Readiness`` whose reason and message fit their limits."""
    return Readiness(ok, fit(reason, MAX_REASON_BYTES), fit(message, MAX_MESSAGE_BYTES))


def fit_version(doc: Mapping[str, Any]) -> Doc:
    """``/version``'s answer as strings, the members that fit ``MAX_VERSION_BYTES``."""
    out: Doc = {}
    for key, value in list(doc.items())[:MAX_VERSION_KEYS]:
        out[str(key)[:MAX_NAME]] = str(value)[:MAX_TEXT]
        if _size(out) > MAX_VERSION_BYTES:
            del out[str(key)[:MAX_NAME]]
    return out


def node_summary(node: Mapping[str, Any]) -> Doc:
    """What the cluster view shows of one Node object (any JSON: odd members are skipped,
    lists and strings capped, the whole within ``MAX_SUMMARY_BYTES``)."""
    summary = _node_summary(node)
    while _size(summary) > MAX_SUMMARY_BYTES:
        if summary["roles"]:
            summary["roles"].pop()
        elif summary["addresses"]:
            summary["addresses"].pop()
        elif summary["capacity"]:
            summary["capacity"] = {}
        elif summary["kubeletVersion"]:
            summary["kubeletVersion"] = ""
        else:
            summary["ready"] = "Unknown"
            break
    return summary


def _node_summary(node: Mapping[str, Any]) -> Doc:
    meta = _mapping(node.get("metadata"))
    status = _mapping(node.get("status"))
    labels = _mapping(meta.get("labels"))
    roles = sorted(
        label[len(ROLE_LABEL_PREFIX) :][:MAX_NAME]
        for label in labels
        if label.startswith(ROLE_LABEL_PREFIX)
    )
    ready = "Unknown"
    for condition in _list(status.get("conditions")):
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            ready = str(condition.get("status") or "Unknown")[:64]
    capacity = _mapping(status.get("capacity"))
    info = _mapping(status.get("nodeInfo"))
    return {
        "name": _text(meta.get("name"), MAX_NAME),
        "roles": [r for r in roles if r][:MAX_LIST],
        "addresses": [
            {
                "type": str(a.get("type") or "")[:MAX_NAME],
                "address": str(a.get("address") or "")[:MAX_NAME],
            }
            for a in _list(status.get("addresses"))[:MAX_LIST]
            if isinstance(a, Mapping)
        ],
        "kubeletVersion": str(info.get("kubeletVersion") or "")[:MAX_NAME],
        "ready": ready,
        "capacity": {
            k: str(capacity[k])[:MAX_NAME] for k in ("cpu", "memory", "pods") if k in capacity
        },
    }


def clean_summary(value: Any) -> Doc:
    """A node summary as an agent reported it, checked: exactly ``node_summary``'s shape
    and limits, else ``ReportError``."""
    if not isinstance(value, dict) or _size(value) > MAX_SUMMARY_BYTES:
        raise ReportError("a node summary must be an object of at most 4 KiB")
    name, ready, kubelet = value.get("name"), value.get("ready"), value.get("kubeletVersion")
    roles, addresses, capacity = value.get("roles"), value.get("addresses"), value.get("capacity")
    if not (_short(name, MAX_NAME) and _short(ready, MAX_NAME) and _short(kubelet, MAX_NAME)):
        raise ReportError("a node summary's name, ready or kubeletVersion is not a short string")
    if not isinstance(roles, list) or len(roles) > MAX_LIST:
        raise ReportError("a node's roles must be a short list")
    if not all(_short(r, MAX_NAME) for r in roles):
        raise ReportError("a node's role is not a short string")
    if not isinstance(addresses, list) or len(addresses) > MAX_LIST:
        raise ReportError("a node's addresses must be a short list")
    clean_addresses = []
    for address in addresses:
        if not (
            isinstance(address, dict)
            and _short(address.get("type"), MAX_NAME)
            and _short(address.get("address"), MAX_NAME)
        ):
            raise ReportError("a node's address is not {type, address}")
        clean_addresses.append({"type": address["type"], "address": address["address"]})
    if not isinstance(capacity, dict) or not all(
        k in ("cpu", "memory", "pods") and _short(v, MAX_NAME) for k, v in capacity.items()
    ):
        raise ReportError("a node's capacity is not {cpu, memory, pods}")
    return {
        "name": name,
        "roles": list(roles),
        "addresses": clean_addresses,
        "kubeletVersion": kubelet,
        "ready": ready,
        "capacity": {k: capacity[k] for k in ("cpu", "memory", "pods") if k in capacity},
    }


def _short(value: Any, limit: int) -> bool:
    return isinstance(value, str) and len(value) <= limit


def project_of(namespace: Mapping[str, Any]) -> str:
    """The namespace's ``PROJECT_ANNOTATION`` ("" if none, not a string, or longer than
    any project id: ``MAX_PROJECT_BYTES``)."""
    annotations = _mapping(_mapping(namespace.get("metadata")).get("annotations"))
    value = annotations.get(PROJECT_ANNOTATION, "")
    return value if isinstance(value, str) and _size(value) <= MAX_PROJECT_BYTES else ""


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME and _size(name) <= MAX_NAME_BYTES


# -- list and watch ----------------------------------------------------------------------


def _whole(item: Mapping[str, Any]) -> Any:
    return dict(item)


class WatchTable:
    """Objects of one kind by name, fed by a list and then watch events (``ADDED``,
    ``MODIFIED``, ``DELETED``, ``BOOKMARK``); keeps the resourceVersion to resume from.

    ``keep`` is what is kept of each object (the whole object by default; the agent keeps
    a node's summary and a namespace's project); at most ``limit`` objects are kept, and
    ``truncated`` says whether one was left out.
    """

    def __init__(self, limit: int, keep: Callable[[Mapping[str, Any]], Any] = _whole) -> None:
        self.limit = limit
        self.keep = keep
        self.items: dict[str, Any] = {}
        self.resource_version = ""
        self.truncated = False

    def replace(self, items: Iterable[Any], resource_version: str) -> None:
        self.items = {}
        self.truncated = False
        for item in items:
            if isinstance(item, Mapping):
                self._put(item)
        self.resource_version = resource_version

    def _put(self, item: Mapping[str, Any]) -> None:
        name = str(_mapping(item.get("metadata")).get("name") or "")
        if not name:
            return
        if name in self.items or len(self.items) < self.limit:
            self.items[name] = self.keep(item)
        else:
            self.truncated = True

    def event(self, kind: str, item: Mapping[str, Any]) -> bool:
        """Apply one event; whether the set of objects changed. ``ERROR`` is the caller's."""
        meta = _mapping(item.get("metadata"))
        version = meta.get("resourceVersion")
        if isinstance(version, str) and version:
            self.resource_version = version
        if kind == "BOOKMARK":
            return False
        name = str(meta.get("name") or "")
        before = self.items.get(name)
        if kind == "DELETED":
            self.items.pop(name, None)
        elif kind in ("ADDED", "MODIFIED"):
            self._put(item)
        return self.items.get(name) != before

    def node_summaries(self) -> list[Doc]:
        """For a table of whole Node objects."""
        return [node_summary(self.items[name]) for name in sorted(self.items)]

    def names(self) -> list[str]:
        return sorted(self.items)


# -- rate and backoff ------------------------------------------------------------------


class TokenBucket:
    """``rate`` events a second on average, bursts of ``burst``; time is given."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now

    def take(self, now: float) -> float:
        """Take one token; the seconds to wait first (0: go now)."""
        self._refill(now)
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def give_back(self) -> None:
        """Undo one ``take`` (its turn was not used)."""
        self.tokens += 1

    def set_rate(self, rate: float, burst: float, now: float) -> None:
        """From ``now`` on, ``rate`` a second in bursts of ``burst`` (refilled at the old
        rate up to ``now``)."""
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self._refill(now)
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, burst)


class Backoff:
    """Exponential backoff: ``base``, doubled per failure up to ``cap``; ``reset`` on success."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        delay: float = min(self.cap, self.base * float(2 ** min(self.failures, 30)))
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


# -- the state and its reports -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Readiness:
    """The API server's ``/readyz`` as the agent last saw it."""

    ok: bool
    reason: str = ""
    message: str = ""

    def doc(self) -> Doc:
        return {"ok": self.ok, "reason": self.reason, "message": self.message}


@dataclass
class State:
    """What an agent knows of its cluster (and what the gateway keeps of its reports)."""

    ready: Readiness | None = None
    """None: not probed yet."""
    version: Doc | None = None
    nodes: dict[str, Doc] = field(default_factory=dict)
    """Node name -> summary."""
    namespaces: dict[str, str] = field(default_factory=dict)
    """Namespace -> its project annotation ("" for none)."""
    listed: frozenset[str] = frozenset()
    """The kinds (``NODES``, ``NAMESPACES``) listed at least once: the others' tables
    are not known yet (empty means unknown, not none)."""
    truncated: frozenset[str] = frozenset()
    """The kinds of which some objects were left out (over the limit)."""

    def copy(self) -> State:
        return State(
            self.ready,
            None if self.version is None else dict(self.version),
            dict(self.nodes),
            dict(self.namespaces),
            self.listed,
            self.truncated,
        )


def _changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """What turns ``old`` into ``new``: changed or added values, None for the removed."""
    out: dict[str, Any] = {name: value for name, value in new.items() if old.get(name) != value}
    out.update({name: None for name in old if name not in new})
    return out


def encode_reports(old: State | None, new: State, max_bytes: int = MAX_REPORT_BYTES) -> list[bytes]:
    """The INFO payloads that bring a peer holding ``old`` (None: nothing, a full
    snapshot) to ``new``; [] if nothing changed. Each payload is at most ``max_bytes``
    (an item too big for one alone, which ``node_summary``'s caps rule out, is left out)."""
    full = old is None
    base = State() if old is None else old
    head: Doc = {}
    if full or new.ready != base.ready:
        head["ready"] = None if new.ready is None else new.ready.doc()
    if full or new.version != base.version:
        head["version"] = new.version
    if full or new.listed != base.listed:
        head["listed"] = sorted(new.listed)
    if full or new.truncated != base.truncated:
        head["truncated"] = sorted(new.truncated)
    nodes = _changes(base.nodes, new.nodes)
    namespaces = _changes(base.namespaces, new.namespaces)
    if not (full or head or nodes or namespaces):
        return []
    chunks: list[Doc] = []
    current: Doc = {"full": True, **head} if full else dict(head)
    room = max_bytes - _size({REPORT_KEY: {**current, "last": True, NODES: {}, NAMESPACES: {}}})
    if room < 0:
        raise ReportError("the report's head alone is over the limit")
    for kind, changes in ((NODES, nodes), (NAMESPACES, namespaces)):
        for name in sorted(changes):
            if not _valid_name(name):
                continue  # no Kubernetes object has such a name; the gateway refuses it
            cost = _size(name) + _size(changes[name]) + 2
            if cost > room and (current.get(NODES) or current.get(NAMESPACES)):
                chunks.append(current)
                current = {}
                room = max_bytes - _size({REPORT_KEY: {"last": True, NODES: {}, NAMESPACES: {}}})
            current.setdefault(kind, {})[name] = changes[name]
            room -= cost
    chunks.append(current)
    chunks[-1]["last"] = True
    return [json.dumps({REPORT_KEY: chunk}, separators=(",", ":")).encode() for chunk in chunks]


HEARTBEAT = json.dumps({REPORT_KEY: {"last": True}}, separators=(",", ":")).encode()
"""An empty report: nothing changed, the agent still follows its cluster."""


_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class Report:
    """One checked chunk. Fields left ``_UNSET`` did not change."""

    full: bool = False
    last: bool = False
    ready: Readiness | None = _UNSET
    version: Doc | None = _UNSET
    listed: frozenset[str] = _UNSET
    truncated: frozenset[str] = _UNSET
    nodes: Mapping[str, Doc | None] = field(default_factory=dict)
    namespaces: Mapping[str, str | None] = field(default_factory=dict)


def _kinds(value: Any, what: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(k in KINDS for k in value):
        raise ReportError(f"{what} must be a list of {', '.join(KINDS)}")
    return frozenset(value)


def _readiness(value: Any) -> Readiness | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("ok"), bool):
        raise ReportError("ready must be {ok, reason, message} or null")
    reason, message = value.get("reason", ""), value.get("message", "")
    if not (
        _short(reason, MAX_TEXT)
        and _short(message, MAX_TEXT)
        and _size(reason) <= MAX_REASON_BYTES
        and _size(message) <= MAX_MESSAGE_BYTES
    ):
        raise ReportError("ready's reason and message must be short strings")
    return Readiness(value["ok"], reason, message)


def _version(value: Any) -> Doc | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or len(value) > MAX_VERSION_KEYS
        or _size(value) > MAX_VERSION_BYTES
        or not all(_short(k, MAX_NAME) and _short(v, MAX_TEXT) for k, v in value.items())
    ):
        raise ReportError("version must be an object of short strings, or null")
    return dict(value)


def parse_report(value: Any) -> Report:
    """One chunk (the value of ``REPORT_KEY`` in an INFO's JSON), checked; ``ReportError``
    if anything in it is not as ``encode_reports`` makes it."""
    if not isinstance(value, dict):
        raise ReportError("a report must be an object")
    full, last = value.get("full", False), value.get("last", False)
    if not isinstance(full, bool) or not isinstance(last, bool):
        raise ReportError("full and last must be booleans")
    nodes_raw, namespaces_raw = value.get(NODES, {}), value.get(NAMESPACES, {})
    if not isinstance(nodes_raw, dict) or not isinstance(namespaces_raw, dict):
        raise ReportError("nodes and namespaces must be objects")
    nodes: dict[str, Doc | None] = {}
    for name, raw in nodes_raw.items():
        if not _valid_name(name):
            raise ReportError("a node name must be 1 to 253 characters")
        summary = None if raw is None else clean_summary(raw)
        if summary is not None and summary["name"] != name:
            raise ReportError("a node summary under another name")
        nodes[name] = summary
    namespaces: dict[str, str | None] = {}
    for name, project in namespaces_raw.items():
        if not _valid_name(name):
            raise ReportError("a namespace name must be 1 to 253 characters")
        if project is not None and not (
            _short(project, MAX_TEXT) and _size(project) <= MAX_PROJECT_BYTES
        ):
            raise ReportError("a namespace's project must be a short string or null")
        namespaces[name] = project
    return Report(
        full=full,
        last=last,
        ready=_readiness(value["ready"]) if "ready" in value else _UNSET,
        version=_version(value["version"]) if "version" in value else _UNSET,
        listed=_kinds(value["listed"], "listed") if "listed" in value else _UNSET,
        truncated=_kinds(value["truncated"], "truncated") if "truncated" in value else _UNSET,
        nodes=nodes,
        namespaces=namespaces,
    )


@dataclass(frozen=True, slots=True)
class Applied:
    """What a chunk changed in a ``ReportedState``'s visible state."""

    changed: bool = False
    namespaces: bool = False
    """Whether a namespace's project changed, or a namespace of a project came or went
    (what the access sync acts on)."""


class ReportedState:
    """The gateway's copy of one agent's reported state.

    Changes apply as they come; a full snapshot is gathered aside and replaces the state
    when its last chunk arrives (the view never shows half a snapshot). ``complete``:
    a snapshot has arrived since reports were asked for.
    """

    def __init__(self, max_nodes: int = MAX_NODES, max_namespaces: int = MAX_NAMESPACES) -> None:
        self.state = State()
        self.complete = False
        self.max_nodes = max_nodes
        self.max_namespaces = max_namespaces
        self._staging: State | None = None
        self._dropped: set[str] = set()

    def heartbeat(self) -> Applied:
        """Apply the agent's empty report (``HEARTBEAT``), known without parsing it: what
        ``apply`` of it gives, without building the report. It changes nothing unless a
        snapshot is being gathered (whose end it then marks, as ``last`` says) or a
        table was cut off since the last snapshot without the state saying so."""
        if self._staging is None and self._dropped <= self.state.truncated:
            return Applied()
        return self.apply(_HEARTBEAT_REPORT)

    def apply(self, report: Report) -> Applied:
        """Apply one chunk. A change set before the first snapshot is ignored."""
        if report.full:
            self._staging = State()
            self._dropped = set()
        staging = self._staging
        if staging is None and not self.complete:
            return Applied()
        target = staging if staging is not None else self.state
        changed = False
        if report.ready is not _UNSET and report.ready != target.ready:
            target.ready, changed = report.ready, True
        if report.version is not _UNSET and report.version != target.version:
            target.version, changed = report.version, True
        if report.listed is not _UNSET and report.listed != target.listed:
            target.listed, changed = report.listed, True
        if report.truncated is not _UNSET and report.truncated != target.truncated:
            target.truncated, changed = report.truncated, True
        node_changes = {n: s for n, s in report.nodes.items() if target.nodes.get(n) != s}
        namespace_changes = {
            n: p for n, p in report.namespaces.items() if target.namespaces.get(n) != p
        }
        projects = any(
            (target.namespaces.get(n) or "") != (p or "") for n, p in namespace_changes.items()
        )
        changed = changed or bool(node_changes or namespace_changes)
        if not _merge(target.nodes, node_changes, self.max_nodes):
            self._dropped.add(NODES)
        if not _merge(target.namespaces, namespace_changes, self.max_namespaces):
            self._dropped.add(NAMESPACES)
        if not self._dropped <= target.truncated:
            target.truncated, changed = target.truncated | self._dropped, True
        if staging is None:
            return Applied(changed, projects)
        if not report.last:
            return Applied()
        before = self.state
        self.state, self._staging = staging, None
        self.complete = True
        return Applied(
            True,
            _projects(staging) != _projects(before) or staging.listed != before.listed,
        )


def _projects(state: State) -> dict[str, str]:
    return {name: project for name, project in state.namespaces.items() if project}


def _merge(table: dict[str, Any], changes: Mapping[str, Any], limit: int) -> bool:
    """Apply ``changes`` (None: remove); False if a new name was left out (over ``limit``)."""
    complete = True
    for name, value in changes.items():
        if value is None:
            table.pop(name, None)
        elif name in table or len(table) < limit:
            table[name] = value
        else:
            complete = False
    return complete


def want_message(interval_s: float, heartbeat_s: float) -> bytes:
    """The gateway's INFO asking for reports."""
    return json.dumps({WANT_KEY: {"interval": interval_s, "heartbeat": heartbeat_s}}).encode()


STOP_MESSAGE = json.dumps({WANT_KEY: None}).encode()
"""The gateway's INFO saying it no longer wants reports."""


@dataclass(frozen=True, slots=True)
class Wanted:
    interval_s: float
    heartbeat_s: float


def parse_want(value: Any) -> Wanted | None:
    """``WANT_KEY``'s value from the gateway (None: stop); odd values read as the
    defaults, clamped to sane bounds."""
    if not isinstance(value, dict):
        return None
    interval, heartbeat = value.get("interval"), value.get("heartbeat")
    interval_s = float(interval) if isinstance(interval, int | float) else 10.0
    heartbeat_s = float(heartbeat) if isinstance(heartbeat, int | float) else 60.0
    return Wanted(min(max(interval_s, 1.0), 3600.0), min(max(heartbeat_s, 5.0), 3600.0))


_HEARTBEAT_REPORT = parse_report(json.loads(HEARTBEAT)[REPORT_KEY])
"""``HEARTBEAT``'s report, parsed once (``ReportedState.heartbeat``)."""

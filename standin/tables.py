"""`meta.k8s.io/v1` Table output, after kube's printers (pkg/printers/internalversion) and the
default and CRD table convertors."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from typing import Any

from .resources import ResourceType

Row = list[Any]
Column = dict[str, Any]

_NAME_DESC = (
    "Name must be unique within a namespace. Is required when creating resources, although some "
    "resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
_CREATED_DESC = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. "
    "It is not guaranteed to be set in happens-before order across separate operations. Clients "
    "may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by "
    "the system. Read-only. Null for lists. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)


def col(name: str, typ: str = "string", desc: str = "", priority: int = 0, fmt: str = "") -> Column:
    return {"name": name, "type": typ, "format": fmt, "description": desc, "priority": priority}


NAME = col("Name", desc=_NAME_DESC, fmt="name")
AGE = col("Age", desc=_CREATED_DESC)


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds_f: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    seconds = int(seconds_f)
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        s = seconds % 60
        return f"{minutes}m" if s == 0 else f"{minutes}m{s}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        years = hours // 24 // 365
        return f"{years}y" if dy == 0 else f"{years}y{dy}d"
    return f"{hours // 24 // 365}y"


def since(value: str | None) -> str:
    """translateTimestampSince."""
    t = parse_time(value)
    if t is None:
        return "<unknown>"
    return human_duration((datetime.datetime.now(datetime.UTC) - t).total_seconds())


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _age(obj: dict[str, Any]) -> str:
    return since(_meta(obj).get("creationTimestamp"))


def _none(value: str) -> str:
    return value or "<none>"


# -- per-kind printers ------------------------------------------------------------------------


def _pod_row(pod: dict[str, Any]) -> Row:
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    containers = spec.get("containers") or []
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount") or 0) for s in statuses)
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for cs in reversed(statuses):
        state = cs.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif (state.get("terminated") or {}).get("reason"):
            reason = state["terminated"]["reason"]
    if reason == "Running" and ready < len(containers):
        ready_cond = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None
        )
        if not ready_cond or ready_cond.get("status") != "True":
            reason = "NotReady"
    if _meta(pod).get("deletionTimestamp"):
        reason = "Terminating"
    return [
        _meta(pod).get("name", ""),
        f"{ready}/{len(containers)}",
        reason,
        restarts,
        _age(pod),
        _none(status.get("podIP", "")),
        _none(spec.get("nodeName", "")),
        _none(status.get("nominatedNodeName", "")),
        "<none>",
    ]


def _service_row(svc: dict[str, Any]) -> Row:
    spec = svc.get("spec") or {}
    svc_type = spec.get("type") or "ClusterIP"
    ports = ",".join(
        f"{p.get('port')}:{p['nodePort']}/{p.get('protocol', 'TCP')}"
        if p.get("nodePort")
        else f"{p.get('port')}/{p.get('protocol', 'TCP')}"
        for p in spec.get("ports") or []
    )
    external = ",".join(spec.get("externalIPs") or [])
    if svc_type == "ExternalName":
        external = spec.get("externalName", "")
    elif svc_type == "LoadBalancer" and not external:
        external = "<pending>"
    selector = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items()))
    return [
        _meta(svc).get("name", ""),
        svc_type,
        _none(spec.get("clusterIP", "")),
        _none(external),
        _none(ports),
        _age(svc),
        _none(selector),
    ]


def _node_row(node: dict[str, Any]) -> Row:
    status = node.get("status") or {}
    conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    state = "Ready" if conds.get("Ready") == "True" else "NotReady"
    if (node.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    roles = sorted(
        k.split("/", 1)[1]
        for k in (_meta(node).get("labels") or {})
        if k.startswith("node-role.kubernetes.io/")
    )
    info = status.get("nodeInfo") or {}
    addrs = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    return [
        _meta(node).get("name", ""),
        state,
        ",".join(roles) or "<none>",
        _age(node),
        info.get("kubeletVersion", ""),
        _none(addrs.get("InternalIP") or ""),
        _none(addrs.get("ExternalIP") or ""),
        info.get("osImage", "<unknown>"),
        info.get("kernelVersion", "<unknown>"),
        info.get("containerRuntimeVersion", "<unknown>"),
    ]


def _event_row(ev: dict[str, Any]) -> Row:
    inv = ev.get("involvedObject") or {}
    src = ev.get("source") or {}
    source = src.get("component", "") + (f", {src['host']}" if src.get("host") else "")
    last = ev.get("lastTimestamp") or ev.get("eventTime") or _meta(ev).get("creationTimestamp")
    first = ev.get("firstTimestamp") or ev.get("eventTime")
    return [
        since(last),
        ev.get("type", ""),
        ev.get("reason", ""),
        f"{(inv.get('kind') or '').lower()}/{inv.get('name', '')}",
        inv.get("fieldPath", ""),
        source,
        (ev.get("message") or "").strip(),
        since(first),
        int(ev.get("count") or 1),
        _meta(ev).get("name", ""),
    ]


def _deployment_row(d: dict[str, Any]) -> Row:
    spec = d.get("spec") or {}
    status = d.get("status") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    return [
        _meta(d).get("name", ""),
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
        int(status.get("updatedReplicas") or 0),
        int(status.get("availableReplicas") or 0),
        _age(d),
        ",".join(c.get("name", "") for c in containers),
        ",".join(c.get("image", "") for c in containers),
        ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "<none>",
    ]


def _binding_row(b: dict[str, Any]) -> Row:
    """printRoleBinding / printClusterRoleBinding (wide: users, groups, service accounts)."""
    ref = b.get("roleRef") or {}
    users: list[str] = []
    groups: list[str] = []
    sas: list[str] = []
    for s in b.get("subjects") or []:
        if s.get("kind") == "User":
            users.append(s.get("name", ""))
        elif s.get("kind") == "Group":
            groups.append(s.get("name", ""))
        elif s.get("kind") == "ServiceAccount":
            sas.append(f"{s.get('namespace', '')}/{s.get('name', '')}")
    return [
        _meta(b).get("name", ""),
        f"{ref.get('kind', '')}/{ref.get('name', '')}",
        _age(b),
        ", ".join(users),
        ", ".join(groups),
        ", ".join(sas),
    ]


_ROLE_REF_DESC = (
    "RoleRef can only reference a ClusterRole in the global namespace. If the RoleRef cannot be "
    "resolved, the Authorizer must return an error. This field is immutable."
)
_LOCAL_ROLE_REF_DESC = (
    "RoleRef can reference a Role in the current namespace or a ClusterRole in the global "
    "namespace. If the RoleRef cannot be resolved, the Authorizer must return an error. This "
    "field is immutable."
)


def _binding_columns(ref_desc: str, what: str) -> list[Column]:
    return [
        NAME,
        col("Role", desc=ref_desc),
        AGE,
        col("Users", desc=f"Users in the {what}", priority=1),
        col("Groups", desc=f"Groups in the {what}", priority=1),
        col("ServiceAccounts", desc=f"ServiceAccounts in the {what}", priority=1),
    ]


_PRINTERS: dict[tuple[str, str], tuple[list[Column], Callable[[dict[str, Any]], Row]]] = {
    ("", "pods"): (
        [
            NAME,
            col("Ready", desc="The aggregate readiness state of this pod for accepting traffic."),
            col("Status", desc="The aggregate status of the containers in this pod."),
            col(
                "Restarts",
                desc=(
                    "The number of times the containers in this pod have been restarted and "
                    "when the last container in this pod has restarted."
                ),
            ),
            AGE,
            col("IP", desc="podIP is the IP address allocated to the pod.", priority=1),
            col("Node", desc="NodeName indicates in which node this pod is scheduled.", priority=1),
            col(
                "Nominated Node",
                desc="nominatedNodeName is set only when this pod preempts other pods on the node.",
                priority=1,
            ),
            col(
                "Readiness Gates",
                desc="If specified, all readiness gates will be evaluated for pod readiness.",
                priority=1,
            ),
        ],
        _pod_row,
    ),
    ("", "configmaps"): (
        [NAME, col("Data", "string", "Data contains the configuration data."), AGE],
        lambda o: [
            _meta(o).get("name", ""),
            len(o.get("data") or {}) + len(o.get("binaryData") or {}),
            _age(o),
        ],
    ),
    ("", "secrets"): (
        [
            NAME,
            col("Type", desc="Used to facilitate programmatic handling of secret data."),
            col("Data", desc="Data contains the secret data."),
            AGE,
        ],
        lambda o: [
            _meta(o).get("name", ""),
            o.get("type", ""),
            len(o.get("data") or {}),
            _age(o),
        ],
    ),
    ("", "namespaces"): (
        [NAME, col("Status", desc="The status of the namespace"), AGE],
        lambda o: [
            _meta(o).get("name", ""),
            (o.get("status") or {}).get("phase", ""),
            _age(o),
        ],
    ),
    ("", "serviceaccounts"): (
        [
            NAME,
            col(
                "Secrets",
                desc=(
                    "Secrets is a list of the secrets in the same namespace that pods running "
                    "using this ServiceAccount are allowed to use."
                ),
            ),
            AGE,
        ],
        lambda o: [_meta(o).get("name", ""), len(o.get("secrets") or []), _age(o)],
    ),
    ("", "services"): (
        [
            NAME,
            col("Type", desc="type determines how the Service is exposed."),
            col("Cluster-IP", desc="clusterIP is the IP address of the service."),
            col(
                "External-IP",
                desc=(
                    "externalIPs is a list of IP addresses for which nodes in the cluster "
                    "will also accept traffic for this service."
                ),
            ),
            col("Port(s)", desc="The list of ports that are exposed by this service."),
            AGE,
            col(
                "Selector",
                desc=(
                    "Route service traffic to pods with label keys and values matching this "
                    "selector."
                ),
                priority=1,
            ),
        ],
        _service_row,
    ),
    ("", "nodes"): (
        [
            NAME,
            col("Status", desc="The status of the node"),
            col("Roles", desc="The roles of the node"),
            AGE,
            col("Version", desc="Kubelet Version reported by the node."),
            col("Internal-IP", desc="List of addresses reachable to the node.", priority=1),
            col("External-IP", desc="List of addresses reachable to the node.", priority=1),
            col("OS-Image", desc="OS Image reported by the node from /etc/os-release.", priority=1),
            col("Kernel-Version", desc="Kernel Version reported by the node.", priority=1),
            col(
                "Container-Runtime",
                desc="ContainerRuntime Version reported by the node.",
                priority=1,
            ),
        ],
        _node_row,
    ),
    ("", "events"): (
        [
            col(
                "Last Seen",
                desc="The time at which the most recent occurrence of this event was recorded.",
            ),
            col(
                "Type",
                desc="Type of this event (Normal, Warning), new types could be added in the future",
            ),
            col(
                "Reason",
                desc=(
                    "This should be a short, machine understandable string that gives the "
                    "reason for the transition into the object's current status."
                ),
            ),
            col("Object", desc="The object that this event is about."),
            col(
                "Subobject",
                desc="If the reference is to an object's sub-part, the path to it.",
                priority=1,
            ),
            col("Source", desc="The component reporting this event.", priority=1),
            col("Message", desc="A human-readable description of the status of this operation."),
            col("First Seen", desc="The time at which the event was first recorded.", priority=1),
            col("Count", desc="The number of times this event has occurred.", priority=1),
            col("Name", desc=_NAME_DESC, priority=1, fmt="name"),
        ],
        _event_row,
    ),
    ("apps", "deployments"): (
        [
            NAME,
            col("Ready", desc="Number of the pod with ready state"),
            col(
                "Up-to-date",
                "integer",
                "Total number of non-terminated pods targeted by this deployment that have the "
                "desired template spec.",
            ),
            col(
                "Available",
                "integer",
                "Total number of available pods (ready for at least minReadySeconds) targeted by "
                "this deployment.",
            ),
            AGE,
            col("Containers", desc="Names of each container in the template.", priority=1),
            col("Images", desc="Images referenced by each container in the template.", priority=1),
            col("Selector", desc="Label selector for pods.", priority=1),
        ],
        _deployment_row,
    ),
    ("rbac.authorization.k8s.io", "rolebindings"): (
        _binding_columns(_LOCAL_ROLE_REF_DESC, "roleBinding"),
        _binding_row,
    ),
    ("rbac.authorization.k8s.io", "clusterrolebindings"): (
        _binding_columns(_ROLE_REF_DESC, "clusterRoleBinding"),
        _binding_row,
    ),
}

_DEFAULT_COLUMNS = [NAME, col("Created At", "date", _CREATED_DESC)]


def _default_row(obj: dict[str, Any]) -> Row:
    created = parse_time(_meta(obj).get("creationTimestamp"))
    return [
        _meta(obj).get("name", ""),
        created.strftime("%Y-%m-%dT%H:%M:%SZ") if created else None,
    ]


# -- CRD columns (JSONPath subset) -----------------------------------------------------------

_JP_TOKEN = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]|\['([^']+)'\]|\[\"([^\"]+)\"\]")


def jsonpath(obj: Any, path: str) -> Any:
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if path.startswith("$"):
        path = path[1:]
    cur = obj
    pos = 0
    while pos < len(path):
        m = _JP_TOKEN.match(path, pos)
        if not m:
            return None
        pos = m.end()
        if m.group(2) is not None:
            idx = int(m.group(2))
            cur = cur[idx] if isinstance(cur, list) and idx < len(cur) else None
        else:
            name = m.group(1) or m.group(3) or m.group(4)
            cur = cur.get(name) if isinstance(cur, dict) else None
        if cur is None:
            return None
    return cur


def _crd_columns(rt: ResourceType) -> tuple[list[Column], Callable[[dict[str, Any]], Row]]:
    specs = rt.printer_columns or [
        {
            "name": "Age",
            "type": "date",
            "jsonPath": ".metadata.creationTimestamp",
            "description": _CREATED_DESC,
        }
    ]
    columns = [NAME] + [
        col(
            c["name"],
            c.get("type", "string"),
            c.get("description", ""),
            int(c.get("priority", 0)),
            c.get("format", ""),
        )
        for c in specs
    ]

    def row(obj: dict[str, Any]) -> Row:
        cells: Row = [_meta(obj).get("name", "")]
        for c in specs:
            value = jsonpath(obj, c.get("jsonPath", ""))
            if value is None:
                cells.append(None)
            elif c.get("type") == "date" and isinstance(value, str):
                cells.append(since(value))
            elif isinstance(value, (dict, list)):
                cells.append(json.dumps(value))
            else:
                cells.append(value)
        return cells

    return columns, row


def converter(rt: ResourceType) -> tuple[list[Column], Callable[[dict[str, Any]], Row]]:
    if rt.crd:
        return _crd_columns(rt)
    return _PRINTERS.get((rt.group, rt.resource), (_DEFAULT_COLUMNS, _default_row))


def partial_metadata(obj: dict[str, Any], api_version: str = "meta.k8s.io/v1") -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "apiVersion": api_version, "metadata": _meta(obj)}


def to_table(
    rt: ResourceType,
    objects: list[dict[str, Any]],
    list_meta: dict[str, Any],
    *,
    api_version: str = "meta.k8s.io/v1",
    include_object: str = "Metadata",
    no_headers: bool = False,
) -> dict[str, Any]:
    columns, row_fn = converter(rt)
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": row_fn(obj)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object == "None":
            row["object"] = None
        else:
            row["object"] = partial_metadata(obj, api_version)
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": api_version,
        "metadata": list_meta,
        "columnDefinitions": None if no_headers else columns,
        "rows": rows,
    }

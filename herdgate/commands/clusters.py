"""``herdgate cluster``: list, show, create, delete, wait, import-command."""

from __future__ import annotations

import argparse
import shlex
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from config.errors import ConfigError
from config.units import parse_duration
from herdgate import output
from herdgate.client import Client, Resource
from herdgate.commands.common import (
    EXIT_OK,
    Failure,
    Progress,
    Session,
    UsageError,
    confirm,
    find_cluster,
    group,
    leaf,
)

if TYPE_CHECKING:
    from herdgate.commands.common import Subparsers

POLL_INTERVAL_S = 1.0
DEFAULT_WAIT = "10m"


def add_parsers(subparsers: Subparsers) -> None:
    inner = group(subparsers, "cluster", "register clusters and see their state")
    leaf(inner, "list", "list the clusters you hold a role on", run_list)
    p = leaf(inner, "show", "show a cluster: state, version, nodes, agents, conditions", run_show)
    p.add_argument("cluster", help="name or id")
    p = leaf(
        inner, "create", "register a new cluster (administrators)", run_create, check=check_times
    )
    p.add_argument("name", help="lowercase letters, digits and '-'")
    p.add_argument("--description", default="")
    p.add_argument("--wait", action="store_true", help="then wait until its agents connect")
    p.add_argument(
        "--timeout", default=DEFAULT_WAIT, help=f"how long to wait (default {DEFAULT_WAIT})"
    )
    p = leaf(inner, "delete", "delete a cluster and disconnect its agents (owners)", run_delete)
    p.add_argument("cluster", help="name or id")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p = leaf(
        inner,
        "wait",
        "wait until a cluster is active (its agents connected)",
        run_wait,
        outputs=False,
        check=check_times,
    )
    p.add_argument("cluster", help="name or id")
    p.add_argument("--state", default="active", help="the state to wait for (default active)")
    p.add_argument(
        "--timeout", default=DEFAULT_WAIT, help=f"how long to wait (default {DEFAULT_WAIT})"
    )
    p = leaf(
        inner,
        "import-command",
        "print the commands that install a cluster's agents (makes a registration token)",
        run_import_command,
        check=check_times,
    )
    p.add_argument("cluster", help="name or id")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--kubectl", action="store_true", help="only the kubectl apply line")
    which.add_argument("--agent", action="store_true", help="only the herdgate agent line")
    p.add_argument(
        "--insecure-download",
        action="store_true",
        help="fetch the manifest with curl --insecure (a machine that does not trust the "
        "gateway's CA yet; the agents still check its checksum)",
    )
    p.add_argument("--ttl", default="", help="the registration token expires after this (e.g. 24h)")
    p.add_argument(
        "--roles-managed",
        action="store_true",
        help="the manifest that lets the agent create and change herdgate's ClusterRoles "
        "itself (escalate: it can then grant any right); without it, apply the manifest "
        "again after changing role templates",
    )


# -- views -------------------------------------------------------------------------------


def version_of(cluster: Mapping[str, Any]) -> str:
    version = cluster.get("version")
    if isinstance(version, dict):
        return str(version.get("gitVersion") or "")
    return "" if version is None else str(version)


def columns(now: float) -> list[output.Column]:
    return [
        output.field("name"),
        output.field("id"),
        output.field("state"),
        output.Column("VERSION", version_of),
        output.field("nodeCount", "NODES"),
        output.Column("AGENTS", lambda c: len(c.get("agents") or [])),
        output.Column("AGE", lambda c: output.age(c.get("created"), now)),
    ]


def describe(cluster: Mapping[str, Any], now: float) -> str:
    ace = cluster.get("localClusterAuthEndpoint") or {}
    replicas = cluster.get("replicas") or {}
    pairs: list[tuple[str, Any]] = [
        ("Name", cluster.get("name")),
        ("ID", cluster.get("id")),
        ("State", cluster.get("state")),
        ("Version", version_of(cluster)),
        ("Description", cluster.get("description")),
        ("Created", cluster.get("created")),
        ("Connected", cluster.get("connectedAt") or "never"),
        ("Namespaces", cluster.get("namespaceCount")),
        (
            "Gateway replicas",
            f"{replicas.get('withTunnel', 0)} of {replicas.get('live', 0)} hold a tunnel",
        ),
        (
            "Direct access",
            f"enabled ({ace.get('fqdn') or 'nodes'})" if ace.get("enabled") else "no",
        ),
    ]
    text = output.details(pairs)
    text += output.section(
        "Nodes",
        ["NAME", "ROLES", "READY", "VERSION"],
        [
            [n.get("name"), n.get("roles"), n.get("ready"), n.get("kubeletVersion")]
            for n in cluster.get("nodes") or []
            if isinstance(n, dict)
        ],
    )
    text += output.section(
        "Agents",
        ["ROLE", "NODE", "REPLICA", "SINCE", "FROM"],
        [
            [
                a.get("role"),
                a.get("node"),
                a.get("replica"),
                output.age(a.get("connectedSince"), now),
                a.get("remote"),
            ]
            for a in cluster.get("agents") or []
            if isinstance(a, dict)
        ],
    )
    text += output.section(
        "Conditions",
        ["TYPE", "STATUS", "REASON", "MESSAGE"],
        [
            [c.get("type"), c.get("status"), c.get("reason"), c.get("message")]
            for c in cluster.get("conditions") or []
            if isinstance(c, dict)
        ],
    )
    return text


def why_not(cluster: Mapping[str, Any]) -> str:
    """The message of the first condition that is not True, for a waiting line."""
    for condition in cluster.get("conditions") or []:
        if isinstance(condition, dict) and condition.get("status") != "True":
            message = condition.get("message") or condition.get("reason")
            if message:
                return str(message)
    return ""


def seconds(text: str, option: str) -> float:
    try:
        value = parse_duration(text, option)
    except ConfigError as exc:
        raise UsageError(f"{option}: {exc.message}") from None
    if value <= 0:
        raise UsageError(f"{option} must be more than 0")
    return value


def check_times(args: argparse.Namespace) -> None:
    for option in ("timeout", "ttl"):
        value = getattr(args, option, "")
        if value:
            seconds(value, f"--{option}")


# -- commands ----------------------------------------------------------------------------


def run_list(session: Session, args: argparse.Namespace) -> int:
    clusters = session.client.clusters.items()
    session.out(
        output.render(
            clusters, columns(time.time()), args.output, "cluster", lambda c: str(c.get("name"))
        )
    )
    if not clusters and not args.output:
        session.note("No clusters (herdgate cluster create NAME registers one).")
    return EXIT_OK


def run_show(session: Session, args: argparse.Namespace) -> int:
    cluster = session.client.clusters.get(str(find_cluster(session.client, args.cluster)["id"]))
    now = time.time()
    session.out(
        output.render_one(
            cluster,
            args.output,
            "cluster",
            lambda c: str(c.get("name")),
            lambda c: describe(c, now),
        )
    )
    return EXIT_OK


def run_create(session: Session, args: argparse.Namespace) -> int:
    timeout = seconds(args.timeout, "--timeout") if args.wait else 0.0
    cluster = session.client.create_cluster(args.name, args.description)
    name = str(cluster.get("name"))
    if args.wait:
        session.note(
            f"Cluster {output.escape(name)} created ({cluster.get('id')}); waiting for its "
            f"agents (herdgate cluster import-command {output.escape(name)} prints how to "
            "start them)"
        )
        cluster = wait_for(session, cluster, "active", timeout)
    message = (
        f"cluster {output.escape(name)} {'is active' if args.wait else 'created'} "
        f"({cluster.get('id')})\n"
    )
    session.out(output.outcome(cluster, args.output, "cluster", message, lambda c: name))
    return EXIT_OK


def run_delete(session: Session, args: argparse.Namespace) -> int:
    cluster = find_cluster(session.client, args.cluster)
    name = output.escape(str(cluster.get("name")))
    confirm(
        f"Delete cluster {name} ({cluster.get('id')})? Its agents are disconnected and its "
        "bindings and projects go with it.",
        args.yes,
        "delete a cluster",
    )
    deleted = session.client.clusters.delete(str(cluster["id"]))
    message = f"cluster {name} deleted\n"
    session.out(output.outcome(deleted, args.output, "cluster", message, lambda c: name))
    return EXIT_OK


def run_wait(session: Session, args: argparse.Namespace) -> int:
    timeout = seconds(args.timeout, "--timeout")
    cluster = find_cluster(session.client, args.cluster)
    cluster = wait_for(session, cluster, args.state, timeout)
    session.out(f"cluster {output.escape(str(cluster.get('name')))} is {args.state}\n")
    return EXIT_OK


def wait_for(
    session: Session,
    cluster: Resource,
    state: str,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Resource:
    """Poll the cluster until its state is ``state``, at most ``timeout`` seconds,
    saying on stderr what it waits for."""
    name = output.escape(str(cluster.get("name")))
    progress = Progress(session.stderr, clock)
    deadline = clock() + timeout
    current = cluster
    for _ in range(int(timeout / POLL_INTERVAL_S) + 2):
        current = session.client.clusters.get(str(cluster["id"]))
        if current.get("state") == state:
            progress.done()
            return current
        reason = why_not(current)
        progress.show(
            f"waiting for cluster {name} to be {state}: {output.escape(str(current.get('state')))}"
            + (f" ({output.escape(reason)})" if reason else "")
        )
        left = deadline - clock()
        if left <= 0:
            break
        sleep(min(POLL_INTERVAL_S, left))
    progress.done()
    raise Failure(
        f"cluster {name} is still {output.escape(str(current.get('state')))} "
        f"after {output.duration(timeout)}",
        f"are its agents running? herdgate cluster import-command {name} prints how to "
        f"start them; herdgate cluster show {name} shows its conditions",
    )


def import_lines(
    registration: Mapping[str, Any], insecure_download: bool, roles_managed: bool = False
) -> tuple[str, str]:
    """The kubectl line and the herdgate agent line of a registration token
    (``roles_managed``: the manifest that lets the agent write herdgate's ClusterRoles)."""
    url = str(registration.get("manifestUrl") or "")
    agent = str(registration.get("nodeCommand") or "")
    if not url or not agent:
        raise Failure("the gateway's registration token holds no commands")
    if roles_managed:
        url += "?roles=managed"
    if insecure_download and not roles_managed:
        kubectl = str(registration.get("insecureCommand") or "")
    elif insecure_download:
        kubectl = f"curl --insecure -sfL {shlex.quote(url)} | kubectl apply -f -"
    else:
        kubectl = shlex.join(["kubectl", "apply", "-f", url])
    return output.escape(kubectl), output.escape(agent)


def run_import_command(session: Session, args: argparse.Namespace) -> int:
    client: Client = session.client
    cluster = find_cluster(client, args.cluster)
    registration = client.create_registration(str(cluster["id"]), args.ttl)
    if args.output:
        session.out(output.outcome(registration, args.output, "clusterregistrationtoken", ""))
        return EXIT_OK
    kubectl, agent = import_lines(registration, args.insecure_download, args.roles_managed)
    name = output.escape(str(cluster.get("name")))
    if args.kubectl:
        session.out(kubectl + "\n")
    elif args.agent:
        session.out(agent + "\n")
    else:
        session.note(
            f"To connect cluster {name}, either run the first line with kubectl pointed at the "
            "cluster (as its administrator: it installs the agents there), or run the second "
            "beside the cluster (add --kubeconfig FILE outside a pod)."
        )
        session.out(f"{kubectl}\n{agent}\n")
    expires = registration.get("expiresAt")
    session.note(
        f"(a new registration token, {registration.get('id')}"
        + (f", valid until {expires}" if expires else "")
        + "; the gateway keeps only its hash, so it is shown only now)"
    )
    return EXIT_OK

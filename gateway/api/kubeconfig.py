"""Kubeconfig documents for ``generateKubeconfig`` and ``POST /v3/kubeconfigs`` (pure).

One block of entries per cluster, every entry named after the cluster:

- the context and cluster entry ``<name>`` (through the gateway,
  ``<server>/k8s/clusters/<id>``) and, with the authorized cluster endpoint, the direct
  ones: ``<name>@fqdn`` (``localClusterAuthEndpoint.fqdn``) or one ``<name>@<node>`` per
  control-plane node (``ace_context``);
- one user entry ``<name>`` that all of the cluster's contexts use: the token, or the
  exec credential (``exec_user``).

Cluster names are ``[a-z0-9-]`` (``gateway.api.clusters``), so a name holds no ``@`` and
no two clusters' entries can share a name: the part before the first ``@`` is the
cluster, the part after it (if any) the direct endpoint. Merging a kubeconfig made later
for one cluster (``config.kubeconfig_merge.merge``) so replaces that cluster's entries and
no other's. Several clusters share one token by holding it each in its own user entry.
"""

from __future__ import annotations

import base64
import copy
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.store.records import Cluster

ACE_SEPARATOR = "@"
"""Between a cluster's name and its direct endpoint in a context's name: a character
cluster names cannot hold."""
EXEC_API_VERSION = "client.authentication.k8s.io/v1"


@dataclass(frozen=True)
class Endpoint:
    """One way into the cluster: a context (and cluster entry) of its own."""

    context: str
    server: str
    ca_pem: str = ""


@dataclass(frozen=True)
class ClusterBlock:
    """One cluster's entries: its endpoints (the gateway's first) and the user entry
    (named ``name``) that their contexts use."""

    name: str
    endpoints: Sequence[Endpoint]
    user: dict[str, Any] = field(default_factory=dict)


def ace_context(cluster_name: str, endpoint: str) -> str:
    """The name of a direct (ACE) context: ``<cluster>@fqdn``, ``<cluster>@<node>``."""
    return f"{cluster_name}{ACE_SEPARATOR}{endpoint}"


def endpoints(cluster: Cluster, server_url: str, gateway_ca_pem: str) -> list[Endpoint]:
    """The gateway's context, then the direct ones: ``<name>@fqdn`` (with ``caCerts``, else
    the cluster's CA), else one ``<name>@<node>`` per control-plane node last seen (the
    CA the agent reported)."""
    found = [Endpoint(cluster.name, f"{server_url}/k8s/clusters/{cluster.id}", gateway_ca_pem)]
    if not cluster.ace_enabled:
        return found
    if cluster.ace_fqdn:
        ca = cluster.ace_ca_certs or cluster.ca_cert
        found.append(Endpoint(ace_context(cluster.name, "fqdn"), f"https://{cluster.ace_fqdn}", ca))
        return found
    found += [
        Endpoint(ace_context(cluster.name, node), url, cluster.ca_cert)
        for node, url in cluster.ace_nodes
    ]
    return found


def token_user(token: str) -> dict[str, Any]:
    return {"token": token}


def install_hint(command: str, server_url: str) -> str:
    """What kubectl shows when it cannot run the exec credential's ``command``."""
    return (
        f"This kubeconfig runs `{command} login` to log in to the herdgate gateway at "
        f"{server_url}, and kubectl cannot run `{command}`.\n"
        "Install herdgate (the package that holds the `herdgate` command) and put the "
        "command on PATH: a virtualenv install has it in <venv>/bin/herdgate, so run "
        "`ln -s <venv>/bin/herdgate ~/.local/bin/herdgate` (with ~/.local/bin on PATH) "
        "or `export PATH=<venv>/bin:$PATH`.\n"
        "Or write the command's full path in this file (users[].user.exec.command), or "
        "ask the gateway's administrator to set kubeconfig.exec_command to it."
    )


def exec_user(
    server_url: str,
    provider: str,
    cluster_ids: Sequence[str],
    command: str = "herdgate",
    hint: str = "",
) -> dict[str, Any]:
    """A kubeconfig user that runs ``herdgate login`` instead of holding a token: one
    ``--cluster`` per cluster, so the one login's token is scoped to exactly those."""
    args = ["login", "--server", server_url, "--provider", provider]
    for cluster_id in cluster_ids:
        args += ["--cluster", cluster_id]
    return {
        "exec": {
            "apiVersion": EXEC_API_VERSION,
            "command": command,
            "args": args,
            "installHint": hint or install_hint(shlex.quote(command), server_url),
            "interactiveMode": "IfAvailable",
            "provideClusterInfo": True,
        }
    }


def document(blocks: Sequence[ClusterBlock], current_context: str = "") -> dict[str, Any]:
    """The kubeconfig for ``blocks`` (at least one); ``current_context`` by default the
    first block's first (the gateway's) context.

    Raises ``ValueError`` if two entries of a list would share a name (the module's
    text says why clusters' entries cannot)."""
    if not blocks:
        raise ValueError("a kubeconfig needs at least one cluster")
    clusters: list[dict[str, Any]] = []
    contexts: list[dict[str, Any]] = []
    users: list[dict[str, Any]] = []
    for block in blocks:
        # A copy each: YAML would write a shared object once and refer to it (an alias).
        users.append({"name": block.name, "user": copy.deepcopy(block.user)})
        for endpoint in block.endpoints:
            entry: dict[str, Any] = {"server": endpoint.server}
            if endpoint.ca_pem:
                entry["certificate-authority-data"] = base64.b64encode(
                    endpoint.ca_pem.encode()
                ).decode()
            clusters.append({"name": endpoint.context, "cluster": entry})
            contexts.append(
                {
                    "name": endpoint.context,
                    "context": {"cluster": endpoint.context, "user": block.name},
                }
            )
    for kind, entries in (("cluster", clusters), ("user", users), ("context", contexts)):
        seen = [e["name"] for e in entries]
        if len(set(seen)) != len(seen):
            raise ValueError(f"two {kind} entries would share a name: {sorted(seen)}")
    current = current_context or blocks[0].endpoints[0].context
    if current not in {c["name"] for c in contexts}:
        raise ValueError(f"current context {current!r} is not one of the kubeconfig's")
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": clusters,
        "users": users,
        "contexts": contexts,
        "current-context": current,
    }

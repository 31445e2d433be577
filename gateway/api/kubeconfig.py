"""Kubeconfig documents for ``generateKubeconfig`` (pure)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import yaml


@dataclass(frozen=True)
class Endpoint:
    """One way into the cluster: a context of its own, sharing the user."""

    context: str
    server: str
    ca_pem: str = ""


def exec_user(server_url: str, provider: str, cluster_id: str) -> dict[str, Any]:
    """A kubeconfig user that runs ``herdgate login`` instead of holding a token."""
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "herdgate",
            "args": [
                "login",
                "--server",
                server_url,
                "--provider",
                provider,
                "--cluster",
                cluster_id,
            ],
            "interactiveMode": "IfAvailable",
            "provideClusterInfo": True,
        }
    }


def build(cluster_name: str, endpoints: list[Endpoint], token: str | dict[str, Any]) -> str:
    """The first endpoint (the gateway) is the current context.

    ``token`` is a token string, or a kubeconfig user entry (see ``exec_user``).
    """
    clusters: list[dict[str, Any]] = []
    contexts: list[dict[str, Any]] = []
    for endpoint in endpoints:
        cluster: dict[str, Any] = {"server": endpoint.server}
        if endpoint.ca_pem:
            cluster["certificate-authority-data"] = base64.b64encode(
                endpoint.ca_pem.encode()
            ).decode()
        clusters.append({"name": endpoint.context, "cluster": cluster})
        contexts.append(
            {
                "name": endpoint.context,
                "context": {"cluster": endpoint.context, "user": cluster_name},
            }
        )
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": clusters,
        "users": [
            {"name": cluster_name, "user": {"token": token} if isinstance(token, str) else token}
        ],
        "contexts": contexts,
        "current-context": endpoints[0].context,
    }
    return yaml.safe_dump(doc, sort_keys=False)

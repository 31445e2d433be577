"""What ``kubectl apply -f <gateway>/v3/import/<token>.yaml`` installs (pure: values in,
documents out).

:func:`agent_documents` is the manifest for one cluster, in apply order: the namespace
(:data:`ace.manifests.NAMESPACE`), the agents' RBAC (:func:`agent_rbac.agent_rbac`: the
``herdgate-agent`` ServiceAccount, its ClusterRoles, Role and bindings), the ClusterRoles
herdgate binds and owns (the agent may bind them but not write them), the registration
token in a Secret, the cluster agent as a Deployment (:data:`CLUSTER_AGENT`, two replicas
spread over nodes) and the node agents as a DaemonSet (:data:`NODE_AGENT`, one on every
node, control-plane nodes included, named by the downward API's ``spec.nodeName``).

Both run ``herdgate agent`` as a pod does it: the gateway's URL and CA checksum (the
SHA-256 of its CA PEM, Rancher's ``CATTLE_CA_CHECKSUM``) and the registration token (from
the Secret) come in ``HERDGATE_*`` variables, the API server through the service account
a pod gets, and ``HERDGATE_HEALTH_LISTEN`` opens the agent's ``/healthz``, ``/readyz`` and
``/metrics`` listener for the kubelet's probes. Every container runs as a numeric non-root
user with a read-only root filesystem, no privilege escalation, every capability dropped
and the runtime's default seccomp profile.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from ace.manifests import NAMESPACE
from gateway.clusters.agent_rbac import (
    AGENT_SERVICE_ACCOUNT,
    CUSTOM_ROLE_PREFIX,
    OWNED_LABELS,
    agent_rbac,
)

Doc = dict[str, Any]

CLUSTER_AGENT = "herdgate-cluster-agent"
NODE_AGENT = "herdgate-node-agent"
TOKEN_SECRET = "herdgate-agent-token"
TOKEN_KEY = "token"
"""The Secret's key holding the registration token (``HERDGATE_TOKEN``)."""
IMAGE_REPOSITORY = "herdgate/agent"
HEALTH_PORT = 9440
"""The agents' health and metrics listener in their pods (``HERDGATE_HEALTH_LISTEN``)."""
HEALTH_PORT_NAME = "health"
AGENT_USER = 10001
"""The numeric user (and group) the agents run as; the image's user (not root)."""
CLUSTER_AGENT_REPLICAS = 2
NODE_NAME_VAR = "NODE_NAME"
"""The downward API's ``spec.nodeName``, expanded into ``--node-name $(NODE_NAME)``."""
CONTROL_PLANE_TAINTS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
PULL_POLICY = "IfNotPresent"
CLUSTER_ID_ANNOTATION = "herdgate.io/cluster-id"

RESOURCES: Doc = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"cpu": "500m", "memory": "256Mi"},
}


@dataclass(frozen=True)
class ManifestParams:
    """What differs between clusters and gateways."""

    server_url: str
    """The gateway's public URL, without a trailing slash."""
    ca_checksum: str
    """SHA-256 (hex) of the gateway's CA PEM; empty when its certificate is publicly
    trusted (the agent then verifies it against the system's roots)."""
    token: str
    """The registration token (``crt-xxxxx:<secret>``); it goes into the Secret only."""
    cluster_id: str
    image: str


def default_image(version: str) -> str:
    return f"{IMAGE_REPOSITORY}:{version}"


def _meta(name: str, namespace: str = "", **labels: str) -> Doc:
    meta: Doc = {"name": name, "labels": {**OWNED_LABELS, **labels}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def namespace_doc(namespace: str = NAMESPACE) -> Doc:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(namespace)}


def token_secret(token: str, namespace: str = NAMESPACE) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(TOKEN_SECRET, namespace),
        "type": "Opaque",
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def _env(params: ManifestParams) -> list[Doc]:
    env: list[Doc] = [{"name": "HERDGATE_SERVER", "value": params.server_url}]
    if params.ca_checksum:
        env.append({"name": "HERDGATE_CA_CHECKSUM", "value": params.ca_checksum})
    env += [
        {
            "name": "HERDGATE_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": TOKEN_SECRET, "key": TOKEN_KEY}},
        },
        {"name": "HERDGATE_HEALTH_LISTEN", "value": f"0.0.0.0:{HEALTH_PORT}"},
    ]
    return env


def _probe(path: str, period_s: int, failures: int) -> Doc:
    return {
        "httpGet": {"path": path, "port": HEALTH_PORT_NAME},
        "periodSeconds": period_s,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _container(params: ManifestParams, args: list[str], extra_env: list[Doc]) -> Doc:
    return {
        "name": "agent",
        "image": params.image,
        "imagePullPolicy": PULL_POLICY,
        "command": ["herdgate"],
        "args": args,
        "env": [*extra_env, *_env(params)],
        "ports": [{"name": HEALTH_PORT_NAME, "containerPort": HEALTH_PORT, "protocol": "TCP"}],
        "livenessProbe": _probe("/healthz", 20, 3),
        "readinessProbe": _probe("/readyz", 5, 2),
        "resources": json.loads(json.dumps(RESOURCES)),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": AGENT_USER,
            "runAsGroup": AGENT_USER,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 - its own emptyDir
    }


def _pod_spec(params: ManifestParams, container: Doc) -> Doc:
    return {
        "serviceAccountName": AGENT_SERVICE_ACCOUNT,
        # The agent is the service account: it reads the projected token (rotated by the
        # kubelet) and sends it on to the gateway's requests.
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [
            {"key": taint, "operator": "Exists", "effect": "NoSchedule"}
            for taint in CONTROL_PLANE_TAINTS
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": AGENT_USER,
            "runAsGroup": AGENT_USER,
            "fsGroup": AGENT_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}],
    }


def _selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "herdgate"}


def cluster_agent(params: ManifestParams, namespace: str = NAMESPACE) -> Doc:
    """The cluster agent: two replicas on different nodes where there are two."""
    labels = _selector(CLUSTER_AGENT)
    spec = _pod_spec(params, _container(params, ["agent"], []))
    spec["affinity"] = {
        "podAntiAffinity": {
            # Preferred, not required: a one-node cluster still runs both replicas.
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": labels},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        }
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(CLUSTER_AGENT, namespace, **labels),
        "spec": {
            "replicas": CLUSTER_AGENT_REPLICAS,
            "selector": {"matchLabels": labels},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": {**OWNED_LABELS, **labels},
                    "annotations": {CLUSTER_ID_ANNOTATION: params.cluster_id},
                },
                "spec": spec,
            },
        },
    }


def node_agent(params: ManifestParams, namespace: str = NAMESPACE) -> Doc:
    """A node agent on every node (the fallback path when the cluster agent is gone)."""
    labels = _selector(NODE_AGENT)
    node_env = [{"name": NODE_NAME_VAR, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    container = _container(params, ["agent", "--node-name", f"$({NODE_NAME_VAR})"], node_env)
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _meta(NODE_AGENT, namespace, **labels),
        "spec": {
            "selector": {"matchLabels": labels},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {
                    "labels": {**OWNED_LABELS, **labels},
                    "annotations": {CLUSTER_ID_ANNOTATION: params.cluster_id},
                },
                "spec": _pod_spec(params, container),
            },
        },
    }


def agent_documents(
    params: ManifestParams,
    namespace: str = NAMESPACE,
    owned_roles: Sequence[Doc] = (),
    manage_roles: bool = False,
) -> list[Doc]:
    """Everything ``kubectl apply`` needs for one cluster, in apply order.

    ``owned_roles``: the ClusterRoles herdgate binds and owns there (the access sync's
    ``owned_cluster_roles``: ``herdgate-cluster-member`` and one per custom role template),
    created by whoever applies the manifest, and listed in the agent's bind role;
    ``manage_roles``: the opt-in that lets the agent create and change them itself
    (``agent_rbac.AGENT_ROLES_ROLE``)."""
    custom = tuple(
        str(doc["metadata"]["name"])
        for doc in owned_roles
        if str(doc["metadata"]["name"]).startswith(CUSTOM_ROLE_PREFIX)
    )
    docs = [
        namespace_doc(namespace),
        *agent_rbac(namespace, custom, manage_roles),
        *owned_roles,
        token_secret(params.token, namespace),
        cluster_agent(params, namespace),
        node_agent(params, namespace),
    ]
    fresh: list[Doc] = json.loads(json.dumps(docs))  # no shared sub-objects: no YAML aliases
    return fresh


def to_yaml(docs: list[Doc]) -> str:
    """The documents as one multi-document YAML stream."""
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=100)

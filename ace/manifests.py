"""The documents that install the webhook in a cluster (pure: values in, documents out).

``cluster_documents()`` is what ``kubectl apply`` takes: the namespace, the two CRDs, a
ServiceAccount with read-only access to exactly those two resources, and the DaemonSet
that runs ``herdgate webhook`` on every control-plane node with the host's network.
``apiserver_webhook_config()`` is not a Kubernetes object but the file kube-apiserver
reads through ``--authentication-token-webhook-config-file``. The files under deploy/
are these functions' output (``python -m ace.manifests write deploy``; a test checks
that they match), and the gateway can serve them per cluster.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from ace.records import GROUP, TOKEN_KIND, TOKEN_PLURAL, USER_KIND, USER_PLURAL, VERSION

NAMESPACE = "herdgate-system"
NAME = "herdgate-webhook"
DEFAULT_IMAGE = "herdgate/herdgate:0.1.0"
PORT = 6440
WEBHOOK_URL = f"http://127.0.0.1:{PORT}/v1/authenticate"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "herdgate"}

Doc = dict[str, Any]

_STRING = {"type": "string"}
_BOOLEAN = {"type": "boolean"}


def _fresh(doc: Doc) -> Doc:
    """A copy that shares no sub-object with anything (callers may edit it; no YAML aliases)."""
    copied: Doc = json.loads(json.dumps(doc))
    return copied


def _crd(
    kind: str,
    plural: str,
    singular: str,
    description: str,
    properties: dict[str, Any],
    required: list[str],
    columns: list[Doc],
) -> Doc:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "herdgate"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "categories": ["herdgate"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "description": description,
                            "type": "object",
                            "required": required,
                            "properties": {
                                "apiVersion": _STRING,
                                "kind": _STRING,
                                "metadata": {"type": "object"},
                                **properties,
                            },
                        }
                    },
                    "additionalPrinterColumns": [
                        *columns,
                        {
                            "name": "Age",
                            "type": "date",
                            "jsonPath": ".metadata.creationTimestamp",
                        },
                    ],
                }
            ],
        },
    }


def crds() -> list[Doc]:
    """ClusterAuthToken and ClusterUserAttribute (top-level fields, no ``spec``, as Rancher's)."""
    token = _crd(
        TOKEN_KIND,
        TOKEN_PLURAL,
        "clusterauthtoken",
        "A herdgate token that may authenticate directly to this cluster's API server. "
        "The object's name is the token id (the part of the bearer token before ':').",
        {
            "userName": {**_STRING, "minLength": 1, "description": "herdgate user id (u-xxxxx)"},
            "hash": {
                **_STRING,
                "pattern": r"^\$3:1:[A-Za-z0-9+/=]*:[A-Za-z0-9+/=]+$",
                "description": "$3:1:<salt base64>:<SHA3-512(salt + secret) base64>",
            },
            "expiresAt": {
                **_STRING,
                "description": "RFC 3339 time after which the token is refused; empty: never",
            },
            "enabled": {**_BOOLEAN, "description": "false refuses the token"},
        },
        ["userName", "hash", "enabled"],
        [
            {"name": "User", "type": "string", "jsonPath": ".userName"},
            {"name": "Enabled", "type": "boolean", "jsonPath": ".enabled"},
            {"name": "Expires", "type": "string", "jsonPath": ".expiresAt"},
        ],
    )
    user = _crd(
        USER_KIND,
        USER_PLURAL,
        "clusteruserattribute",
        "The identity of a herdgate user as this cluster sees it. "
        "The object's name is the user id (u-xxxxx).",
        {
            "username": {**_STRING, "description": "login name (the 'username' extra)"},
            "principalId": {**_STRING, "description": "e.g. local://u-xxxxx"},
            "groups": {
                "type": "array",
                "items": _STRING,
                "description": "group principals and role groups (herdgate:cluster-member ...)",
            },
            "enabled": {**_BOOLEAN, "description": "false refuses all of the user's tokens"},
        },
        ["enabled"],
        [
            {"name": "Username", "type": "string", "jsonPath": ".username"},
            {"name": "Enabled", "type": "boolean", "jsonPath": ".enabled"},
        ],
    )
    return [_fresh(token), _fresh(user)]


def namespace(name: str = NAMESPACE) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "herdgate"}},
    }


def rbac(ns: str = NAMESPACE) -> list[Doc]:
    """A ServiceAccount that may only get, list and watch the two kinds in ``ns``."""
    meta = {"name": NAME, "namespace": ns, "labels": LABELS}
    docs: list[Doc] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": [TOKEN_PLURAL, USER_PLURAL],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": ns}],
        },
    ]
    return [_fresh(d) for d in docs]


def _control_plane_term(label: str) -> Doc:
    return {
        "matchExpressions": [
            {"key": label, "operator": "Exists"},
            {"key": "kubernetes.io/os", "operator": "NotIn", "values": ["windows"]},
        ]
    }


def daemonset(image: str = DEFAULT_IMAGE, ns: str = NAMESPACE, port: int = PORT) -> Doc:
    """``herdgate webhook`` on every control-plane node, on the host's loopback.

    hostNetwork puts the listener on the node's 127.0.0.1, where kube-apiserver reaches it;
    ``Exists`` on either control-plane label (kubeadm/RKE2 set ``control-plane``, RKE1 sets
    ``controlplane``) selects the nodes, and the pod tolerates every taint.
    """
    probe_host = "127.0.0.1"
    doc = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": NAME, "namespace": ns, "labels": LABELS},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {
                    "serviceAccountName": NAME,
                    "hostNetwork": True,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    _control_plane_term("node-role.kubernetes.io/control-plane"),
                                    _control_plane_term("node-role.kubernetes.io/controlplane"),
                                ]
                            }
                        }
                    },
                    "tolerations": [{"operator": "Exists"}],
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "webhook",
                            "image": image,
                            "command": ["herdgate", "webhook"],
                            "args": ["--listen", f"127.0.0.1:{port}", "--namespace", ns],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "readinessProbe": {
                                "httpGet": {"host": probe_host, "port": port, "path": "/healthz"},
                                "periodSeconds": 5,
                            },
                            "livenessProbe": {
                                "httpGet": {"host": probe_host, "port": port, "path": "/livez"},
                                "periodSeconds": 20,
                                "failureThreshold": 3,
                            },
                            "resources": {
                                "requests": {"cpu": "20m", "memory": "64Mi"},
                                "limits": {"memory": "256Mi"},
                            },
                        }
                    ],
                },
            },
        },
    }
    return _fresh(doc)


def cluster_documents(image: str = DEFAULT_IMAGE, ns: str = NAMESPACE) -> list[Doc]:
    """Everything ``kubectl apply`` needs, in order: namespace, CRDs, RBAC, DaemonSet."""
    return [namespace(ns), *crds(), *rbac(ns), daemonset(image, ns)]


def apiserver_webhook_config(url: str = WEBHOOK_URL) -> Doc:
    """The file kube-apiserver reads with ``--authentication-token-webhook-config-file``.

    Plain HTTP to the node's own loopback: the token never leaves the host. For HTTPS, add
    ``certificate-authority`` to the cluster entry and run the webhook with a certificate.
    """
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": NAME, "cluster": {"server": url}}],
        "users": [{"name": "kube-apiserver", "user": {}}],
        "contexts": [{"name": "webhook", "context": {"cluster": NAME, "user": "kube-apiserver"}}],
        "current-context": "webhook",
    }


def to_yaml(docs: list[Doc]) -> str:
    """Documents as one multi-document YAML text."""
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=100)


HEADER = "# Generated by `python -m ace.manifests write deploy`; edit ace/manifests.py.\n"


def deploy_files() -> dict[str, str]:
    """The files under deploy/, by relative path."""
    return {
        "crds.yaml": HEADER + to_yaml(crds()),
        "webhook.yaml": HEADER + to_yaml([namespace(), *rbac(), daemonset()]),
        "apiserver/kube-api-authn-webhook.yaml": HEADER + to_yaml([apiserver_webhook_config()]),
    }


def main(argv: list[str]) -> int:  # pragma: no cover - a developer's tool
    if len(argv) == 2 and argv[0] == "write":
        for name, text in deploy_files().items():
            path = Path(argv[1]) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return 0
    sys.stdout.write(to_yaml(cluster_documents()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))

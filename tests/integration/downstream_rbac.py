"""RBAC objects made by hand in the stand-in API server by the cluster's own administrator
(``World.cluster_admin_kubeconfig``): what a cluster's operator grants beside the access
sync (herdgate never touches objects without its label), e.g. a user's right to
impersonate.
"""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from tests.binaries import kubectl
from tests.integration.conftest import World
from tests.integration.env import kubectl_run

RBAC_GROUP = "rbac.authorization.k8s.io"


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def downstream(world: World, *args: str, stdin: str | None = None) -> str:
    """kubectl straight to the stand-in, as the cluster's administrator."""
    return ok(kubectl_run(kubectl("1.32"), world.cluster_admin_kubeconfig(), *args, stdin=stdin))


def apply(world: World, *docs: dict[str, Any]) -> None:
    downstream(world, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))


def impersonator_role(name: str, resource: str, names: list[str]) -> dict[str, Any]:
    """A ClusterRole allowing ``impersonate`` on ``resource`` (core group) named ``names``."""
    return {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [
            {
                "apiGroups": [""],
                "resources": [resource],
                "verbs": ["impersonate"],
                "resourceNames": names,
            }
        ],
    }


def binding(name: str, role: str, user: str) -> dict[str, Any]:
    """A ClusterRoleBinding of ``role`` to the user ``user``."""
    return {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": RBAC_GROUP, "kind": "User", "name": user}],
    }


def admin_id(world: World) -> str:
    return str(world.admin.get("/v3/users?me=true")["data"][0]["id"])


def bind_admin_as_cluster_admin(world: World) -> str:
    """The gateway administrator's ``cluster-admin`` downstream (what the access sync gives
    every administrator); returns the admin's user id."""
    user = admin_id(world)
    apply(world, binding(f"test-cluster-admin-{user}", "cluster-admin", user))
    return user

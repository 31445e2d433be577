"""Fixtures: one stand-in API server per test session, kubeconfigs for its users, kubectl."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from config.tls import make_ca, write_cert
from standin.harness import StandInProcess, run_kubectl
from tests.binaries import find_kubectl, require

Doc = dict[str, Any]

TOKENS = {
    "admin-token": ("admin", "uid-admin", ["system:masters"]),
    "alice-token": ("alice", "uid-alice", ["devs", "qa"]),
    "carol-token": ("carol", "uid-carol", []),
}

Kubectl = Callable[..., subprocess.CompletedProcess[str]]

_RBAC = "rbac.authorization.k8s.io/v1"


def _granted(name: str, rules: list[dict[str, Any]], subjects: list[dict[str, str]]) -> list[Doc]:
    return [
        {"apiVersion": _RBAC, "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules},
        {
            "apiVersion": _RBAC,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": subjects,
        },
    ]


# What the session's users may do (admin is in system:masters): alice everything but
# impersonation, carol impersonation of users only, bob (impersonated by admin) configmaps.
OBJECTS: list[Doc] = [
    *_granted(
        "standin-test-alice",
        [
            {
                "apiGroups": ["*"],
                "resources": ["*"],
                "verbs": ["get", "list", "watch", "create", "update", "patch", "delete",
                          "deletecollection"],
            },
            {"nonResourceURLs": ["*"], "verbs": ["get"]},
        ],
        [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}],
    ),
    *_granted(
        "standin-test-carol",
        [{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"]}],
        [{"kind": "User", "name": "carol", "apiGroup": "rbac.authorization.k8s.io"}],
    ),
    *_granted(
        "standin-test-bob",
        [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}],
        [{"kind": "User", "name": "bob", "apiGroup": "rbac.authorization.k8s.io"}],
    ),
]  # fmt: skip


def need_kubectl(version: str) -> str:
    binary = find_kubectl(version)
    if binary is None:
        require(None, f"kubectl {version}")
    return binary


ClientCA = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


@pytest.fixture(scope="session")
def client_ca(tmp_path_factory: pytest.TempPathFactory) -> ClientCA:
    return make_ca("standin-client-ca")


@pytest.fixture(scope="session")
def standin(
    tmp_path_factory: pytest.TempPathFactory, client_ca: ClientCA
) -> Iterator[StandInProcess]:
    workdir = tmp_path_factory.mktemp("standin")
    ca_file = workdir / "client-ca.crt"
    write_cert(ca_file, client_ca[0])
    server = StandInProcess.start(
        workdir,
        tokens=TOKENS,
        objects=OBJECTS,
        args=["--client-ca-file", str(ca_file)],
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kubeconfigs(standin: StandInProcess) -> dict[str, Path]:
    return {
        token.split("-")[0]: standin.kubeconfig(
            standin.workdir / f"kubeconfig-{token}", token=token
        )
        for token in TOKENS
    }


@pytest.fixture
def kubectl(kubeconfigs: dict[str, Path]) -> Kubectl:
    """kubectl(version, *args, user="admin", stdin=None, timeout=30)."""

    def run(
        version: str,
        *args: str,
        user: str = "admin",
        stdin: str | None = None,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        return run_kubectl(
            need_kubectl(version), kubeconfigs[user], *args, stdin=stdin, timeout=timeout
        )

    return run

"""The agent in a pod (``tunnel.credentials.in_cluster_upstream``): the API server from
``KUBERNETES_SERVICE_HOST``/``_PORT``, the service account's CA and token, the token
read again on refresh (the kubelet rotates it), a clear error outside a pod."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from config.schema import AgentSettings
from config.tls import ensure_generated_certs
from tunnel.credentials import AgentError, in_cluster_upstream


@pytest.fixture
def account(tmp_path: Path) -> Path:
    certs = tmp_path / "certs"
    ensure_generated_certs(certs, ["127.0.0.1"])
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("first-token\n")
    (sa / "ca.crt").write_text((certs / "ca.crt").read_text())
    (sa / "namespace").write_text("herdgate-system")
    return sa


ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def test_in_cluster_reads_the_service_account(account: Path) -> None:
    settings = AgentSettings(service_account_dir=str(account))
    upstream = in_cluster_upstream(settings, ENV)
    assert (upstream.host, upstream.port) == ("10.96.0.1", 443)
    assert upstream.server_hostname == "10.96.0.1" and upstream.ssl is not None
    assert upstream.authorization == "Bearer first-token"
    assert upstream.ca_pem == (account / "ca.crt").read_text()
    (account / "token").write_text("rotated-token")
    assert upstream.refresh is not None

    async def refreshed() -> str:
        assert upstream.refresh is not None
        return await upstream.refresh()

    assert asyncio.run(refreshed()) == "Bearer rotated-token"


def test_ipv6_service_host(account: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    upstream = in_cluster_upstream(AgentSettings(service_account_dir=str(account)), env)
    assert upstream.host_header == "[fd00::1]:6443"


def test_outside_a_pod_says_so(account: Path) -> None:
    with pytest.raises(AgentError) as err:
        in_cluster_upstream(AgentSettings(service_account_dir=str(account)), {})
    assert str(err.value) == (
        "no cluster to serve: not running in a pod (KUBERNETES_SERVICE_HOST is not set) and "
        "no --kubeconfig given; pass --kubeconfig FILE (the cluster's API server and a "
        "credential that may impersonate, as the manifest's RBAC grants), or run the agent "
        "in the cluster (the registration token's kubectl apply -f line)"
    )


def test_bad_port(account: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "https"}
    with pytest.raises(AgentError, match="KUBERNETES_SERVICE_PORT must be a port number"):
        in_cluster_upstream(AgentSettings(service_account_dir=str(account)), env)


def test_missing_or_empty_token(account: Path) -> None:
    settings = AgentSettings(service_account_dir=str(account))
    (account / "token").write_text("")
    with pytest.raises(AgentError, match="is empty"):
        in_cluster_upstream(settings, ENV)
    (account / "token").unlink()
    with pytest.raises(AgentError, match="cannot read the service account token"):
        in_cluster_upstream(settings, ENV)


def test_missing_ca(account: Path) -> None:
    (account / "ca.crt").unlink()
    with pytest.raises(AgentError, match="cannot load the service account CA"):
        in_cluster_upstream(AgentSettings(service_account_dir=str(account)), ENV)

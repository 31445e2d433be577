"""The agent's view of its cluster: in-cluster service account or a kubeconfig."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from config.schema import AgentSettings
from config.tls import make_ca
from tunnel.credentials import AgentError, cluster_upstream


def _ca_pem(tmp_path: Path) -> Path:
    cert, _ = make_ca("test-ca")
    path = tmp_path / "ca.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


async def test_in_cluster_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("sa-token-123")
    _ca_pem(tmp_path)  # tmp_path/ca.crt: the service account directory's layout
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.43.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    upstream = await cluster_upstream(AgentSettings(service_account_dir=str(tmp_path)))
    assert (upstream.host, upstream.port, upstream.host_header) == (
        "10.43.0.1",
        443,
        "10.43.0.1:443",
    )
    assert upstream.authorization == "Bearer sa-token-123"
    assert upstream.ssl is not None and upstream.server_hostname == "10.43.0.1"
    assert "sa-token" not in repr(upstream)


async def test_kubeconfig_with_inline_ca_and_token(tmp_path: Path) -> None:
    ca = _ca_pem(tmp_path)
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://[::1]:6443",
                                                        "certificate-authority": str(ca)}}],
                "users": [{"name": "u", "user": {"token": "kc-token"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )  # fmt: skip
    upstream = await cluster_upstream(AgentSettings(kubeconfig=str(kubeconfig)))
    assert upstream.host_header == "[::1]:6443"
    assert upstream.authorization == "Bearer kc-token"


async def test_missing_credentials_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(
        AgentError, match=r"not running in a pod \(KUBERNETES_SERVICE_HOST is not set\)"
    ):
        await cluster_upstream(AgentSettings())
    with pytest.raises(AgentError, match="cannot load cluster credentials"):
        await cluster_upstream(AgentSettings(kubeconfig="/nonexistent/kubeconfig"))

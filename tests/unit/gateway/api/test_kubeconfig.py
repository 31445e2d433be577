from __future__ import annotations

import base64

import yaml

from gateway.api.kubeconfig import Endpoint, build


def test_kubeconfig_has_gateway_context_current() -> None:
    text = build(
        "dev",
        [
            Endpoint("dev", "https://gw:8443/k8s/clusters/c-1", "PEM"),
            Endpoint("dev-fqdn", "https://k"),
        ],
        "token-abc:secret",
    )
    doc = yaml.safe_load(text)
    assert doc["current-context"] == "dev"
    assert doc["clusters"][0]["cluster"]["server"] == "https://gw:8443/k8s/clusters/c-1"
    assert base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"]) == b"PEM"
    assert "certificate-authority-data" not in doc["clusters"][1]["cluster"]
    assert doc["users"] == [{"name": "dev", "user": {"token": "token-abc:secret"}}]
    assert {c["context"]["user"] for c in doc["contexts"]} == {"dev"}

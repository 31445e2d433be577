"""OIDC through the real gateway: ID tokens on the proxy, and the device login."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from tests.binaries import kubectl
from tests.fakes.oidc_issuer import FakeIssuer, gateway_oidc_settings, running_issuer
from tests.fakes.threaded import BackgroundLoop
from tests.integration.conftest import World, start_world, stop_world
from tests.integration.env import kubectl_run, write_kubeconfig
from tests.integration.test_proxy_errors import raw_request

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def oidc(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[World, FakeIssuer, BackgroundLoop]]:
    tmp = tmp_path_factory.mktemp("oidc")
    with running_issuer(tmp / "issuer") as (issuer, loop):
        config = gateway_oidc_settings(
            issuer, groups_claim="groups", jwks_min_refresh_interval="0s"
        )
        world = start_world(tmp, name="oidc", gateway_config=yaml.safe_dump(config))
        try:
            binding = world.admin.post(
                "/v3/clusterroletemplatebindings",
                {
                    "clusterId": world.cluster_id,
                    "groupPrincipalId": "oidc_group://ops",
                    "roleTemplateId": "cluster-member",
                },
            )
            world.wait_synced(binding["id"])
            yield world, issuer, loop
        finally:
            stop_world(world)


def token_kubeconfig(world: World, token: str, name: str) -> Path:
    doc = yaml.safe_load(world.kubeconfig_for(world.admin, f"oidc-base-{name}").read_text())
    doc["users"][0]["user"]["token"] = token
    return write_kubeconfig(world.tmp / f"kubeconfig-oidc-{name}", yaml.safe_dump(doc))


def test_id_token_is_accepted_on_the_proxy(oidc: Any) -> None:
    world, issuer, _ = oidc
    kc = token_kubeconfig(world, issuer.mint(), "valid")
    out = kubectl_run(kubectl("1.32"), kc, "auth", "whoami", "-o", "json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)["status"]["userInfo"]
    assert info["username"].startswith("u-")
    assert {"oidc_group://ops", "oidc_group://dev", "herdgate:cluster-member"} <= set(
        info["groups"]
    )
    assert info["extra"]["principalid"] == ["oidc_user://u-1234"]
    assert info["extra"]["username"] == ["alice@example.com"]
    # The same person is the same herdgate user on the next request.
    again = json.loads(kubectl_run(kubectl("1.32"), kc, "auth", "whoami", "-o", "json").stdout)
    assert again["status"]["userInfo"]["username"] == info["username"]


def _rejected(world: World, token: str) -> bool:
    status, body = raw_request(world, "GET", f"/k8s/clusters/{world.cluster_id}/api", token)
    return status == 401 and body.get("kind") == "Status"


def test_bad_tokens_are_401(oidc: Any) -> None:
    world, issuer, _ = oidc
    now = int(time.time())
    public_pem = issuer.active.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    stranger = FakeIssuer(world.tmp / "stranger")
    bad = {
        "expired": issuer.mint(exp=now - 120, iat=now - 600),
        "wrong audience": issuer.mint(aud="someone-else"),
        "wrong issuer": issuer.mint(iss="https://evil.example.com"),
        "alg none": issuer.mint_raw({"alg": "none", "typ": "JWT"}, issuer.claims(), b""),
        "hs256 with public key": issuer.mint_hmac(public_pem),
        "unknown kid": stranger.mint(iss=issuer.url),
        "tampered": issuer.mint()[:-4] + "AAAA",
    }
    for name, token in bad.items():
        assert _rejected(world, token), name


def test_key_rotation_is_picked_up(oidc: Any) -> None:
    world, issuer, _ = oidc
    issuer.rotate()
    status, _ = raw_request(world, "GET", f"/k8s/clusters/{world.cluster_id}/api", issuer.mint())
    assert status == 200


def test_device_login_gives_a_herdgate_token(oidc: Any) -> None:
    world, issuer, _ = oidc
    api = world.gateway.api()
    flow = api.post("/v3-public/oidcProviders/oidc?action=deviceCode", {})
    assert flow["userCode"] and flow["verificationUri"]
    pending = api.call(
        "POST",
        "/v3-public/oidcProviders/oidc?action=deviceToken",
        {"deviceCode": flow["deviceCode"]},
    )
    assert pending["status"] == "pending"
    issuer.approve(flow["userCode"])
    time.sleep(flow["interval"])
    result = api.post(
        "/v3-public/oidcProviders/oidc?action=deviceToken", {"deviceCode": flow["deviceCode"]}
    )
    token = result["token"]
    me = world.gateway.api(token).get("/v3/users?me=true")["data"][0]
    assert me["principalIds"] == ["oidc_user://u-1234"]


def test_login_plugin_device_flow(oidc: Any) -> None:
    import os
    import re
    import subprocess
    import sys

    world, issuer, _ = oidc
    home = world.tmp / "home-device"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home)}
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "herdgate",
            "login",
            "--server",
            world.gateway.url,
            "--provider",
            "oidc",
            "--ca-file",
            str(world.gateway.ca_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        code = re.search(r"enter the code (\S+)", line)
        assert code, line
        issuer.approve(code.group(1))
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    credential = json.loads(out)
    assert credential["kind"] == "ExecCredential" and credential["status"]["token"].startswith(
        "token-"
    )


def test_cli_device_login_saves_a_context(oidc: Any) -> None:
    """``herdgate login URL --provider oidc``: the device flow, then a saved context the
    other commands use (the ops group is cluster-member of the world's cluster)."""
    import os
    import re
    import subprocess
    import sys

    world, issuer, _ = oidc
    home = world.tmp / "home-cli-device"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERDGATE_", "KUBE"))}
    env["HOME"] = str(home)
    command = [sys.executable, "-m", "herdgate"]
    with subprocess.Popen(
        [*command, "login", world.gateway.url, "--provider", "oidc",
         "--ca", str(world.gateway.ca_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    ) as proc:  # fmt: skip
        assert proc.stderr is not None
        line = proc.stderr.readline()
        code = re.search(r"enter the code (\S+)", line)
        assert code, line
        issuer.approve(code.group(1))
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == "" and "Logged in to" in err
    config = json.loads((home / ".herdgate" / "config.json").read_text())
    context = config["contexts"][config["currentContext"]]
    assert context["provider"] == "oidc" and context["tokenOwned"] is True
    listed = subprocess.run(
        [*command, "cluster", "list", "-o", "name"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == f"cluster/{world.cluster_name}\n"

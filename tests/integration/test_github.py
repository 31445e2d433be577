"""GitHub (Enterprise-shaped API paths) through the real gateway: device login, teams as
group principals, a binding by team granting kubectl access."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.binaries import kubectl
from tests.fakes.github_api import FakeGitHub
from tests.fakes.threaded import BackgroundLoop
from tests.integration.conftest import World, start_world, stop_world
from tests.integration.env import kubectl_run, write_kubeconfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def github(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, FakeGitHub]]:
    tmp = tmp_path_factory.mktemp("github")
    loop = BackgroundLoop()
    fake = FakeGitHub(tmp / "github", api_prefix="/api/v3")
    loop.run(fake.start())
    octo = fake.add_user(4242, "octocat", "The Octocat")
    org = octo.add_org(77, "platform")
    octo.add_team(901, "sre", org)
    config = {
        "auth": {
            "github": {
                "enabled": True,
                "client_id": fake.client_id,
                "client_secret": fake.client_secret,
                "web_url": fake.web_url,
                "api_url": fake.api_url,
                "ca_file": fake.ca_file,
            }
        }
    }
    world = start_world(tmp, name="gh", gateway_config=yaml.safe_dump(config))
    try:
        yield world, fake
    finally:
        stop_world(world)
        loop.run(fake.stop())
        loop.close()


def test_device_login_and_team_binding(github: Any) -> None:
    world, fake = github
    api = world.gateway.api()
    flow = api.post("/v3-public/githubProviders/github?action=deviceCode", {})
    fake.approve(flow["userCode"])
    time.sleep(flow["interval"])
    result = api.post(
        "/v3-public/githubProviders/github?action=deviceToken", {"deviceCode": flow["deviceCode"]}
    )
    token = result["token"]
    me = world.gateway.api(token).get("/v3/users?me=true")["data"][0]
    assert me["principalIds"] == ["github_user://4242"]
    binding = world.admin.post(
        "/v3/clusterroletemplatebindings",
        {
            "clusterId": world.cluster_id,
            "groupPrincipalId": "github_team://901",
            "roleTemplateId": "cluster-member",
        },
    )
    world.wait_synced(binding["id"])
    config = world.gateway.api(token).post(
        f"/v3/clusters/{world.cluster_id}?action=generateKubeconfig"
    )["config"]
    kc = write_kubeconfig(world.tmp / "kubeconfig-octocat", config)
    out = kubectl_run(kubectl("1.32"), kc, "auth", "whoami", "-o", "json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)["status"]["userInfo"]
    assert info["username"] == me["id"]
    assert {"github_org://77", "github_team://901"} <= set(info["groups"])
    assert info["extra"]["username"] == ["octocat"]


def test_bad_device_code_is_refused(github: Any) -> None:
    world, _ = github
    from tests.integration.env import ApiError

    with pytest.raises(ApiError) as info:
        world.gateway.api().post(
            "/v3-public/githubProviders/github?action=deviceToken", {"deviceCode": "nope"}
        )
    assert info.value.status == 401

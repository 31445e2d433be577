"""kubectl with a kubeconfig that runs `herdgate login` (exec credential plugin)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from tests.binaries import kubectl
from tests.integration.conftest import USER_PASSWORD, World
from tests.integration.env import kubectl_run, write_kubeconfig

pytestmark = pytest.mark.integration


def exec_kubeconfig(world: World, api_token: str, name: str, env: dict[str, str]) -> Path:
    api = world.gateway.api(api_token)
    config = yaml.safe_load(
        api.post(
            f"/v3/clusters/{world.cluster_id}?action=generateKubeconfig", {"credential": "exec"}
        )["config"]
    )
    user = config["users"][0]["user"]
    assert "token" not in user and user["exec"]["command"] == "herdgate"
    assert user["exec"]["args"][-2:] == ["--cluster", world.cluster_id]
    user["exec"]["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return write_kubeconfig(world.tmp / f"kubeconfig-exec-{name}", yaml.safe_dump(config))


def test_exec_plugin_logs_in_once_and_caches(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    user_id, api = world.user("plugin-user", role="cluster-member")
    kc = exec_kubeconfig(
        world,
        api.token,
        "local",
        {"HERDGATE_USERNAME": "plugin-user", "HERDGATE_PASSWORD": USER_PASSWORD},
    )
    home = world.tmp / "home-plugin"
    for version in ("1.32", "1.27"):
        out = kubectl_run(kubectl(version), kc, "auth", "whoami", "-o", "json", home=home)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["status"]["userInfo"]["username"] == user_id
    cached = list((home / ".herdgate" / "cache").glob("*.json"))
    assert len(cached) == 1
    assert stat.S_IMODE(cached[0].stat().st_mode) == 0o600
    logins = [
        t for t in api.get("/v3/tokens")["data"] if t["description"] == "kubectl (herdgate login)"
    ]
    assert len(logins) == 1 and logins[0]["clusterId"] == world.cluster_id


def test_exec_plugin_wrong_password_fails_clearly(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    _, api = world.user("plugin-bad", role="cluster-member")
    kc = exec_kubeconfig(
        world, api.token, "bad", {"HERDGATE_USERNAME": "plugin-bad", "HERDGATE_PASSWORD": "nope"}
    )
    out = kubectl_run(kubectl("1.32"), kc, "get", "pods", home=world.tmp / "home-plugin-bad")
    assert out.returncode != 0
    assert "login failed (HTTP 401)" in out.stderr

"""A gateway restart keeps every record, and agents come back on their own."""

from __future__ import annotations

import json

import pytest

from tests.binaries import kubectl
from tests.integration.conftest import World
from tests.integration.env import kubectl_run

pytestmark = pytest.mark.integration


def test_restart_keeps_state_and_agents_reconnect(world: World) -> None:
    user_id, api = world.user("persistent", role="cluster-owner")
    kc = world.kubeconfig_for(api, "persistent")
    api_token = api.post("/v3/tokens", {"description": "ci"})["token"]
    bindings_before = world.admin.get(
        f"/v3/clusterroletemplatebindings?clusterId={world.cluster_id}"
    )
    users_before = {u["id"] for u in world.admin.get("/v3/users")["data"]}

    world.gateway.stop()
    world.gateway.start()

    # Users, tokens (login, API and kubeconfig), clusters and bindings survived.
    admin = world.gateway.api(world.admin.token)
    assert {u["id"] for u in admin.get("/v3/users")["data"]} == users_before
    assert world.gateway.api(api_token).get("/v3/users?me=true")["data"][0]["id"] == user_id
    assert admin.get(f"/v3/clusters/{world.cluster_id}")["name"] == world.cluster_name
    after = admin.get(f"/v3/clusterroletemplatebindings?clusterId={world.cluster_id}")
    assert after["data"] == bindings_before["data"]
    # The still-running agent reconnects without any action, and kubectl works again.
    world.wait_state("active", timeout=20)
    # It was told why (GOAWAY before the connection closed), so it waited a spread-out
    # delay instead of counting a failure.
    assert "peer is going away: gateway shutting down" in world.agent.log_file.read_text()
    out = kubectl_run(kubectl("1.32"), kc, "auth", "whoami", "-o", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"]["userInfo"]["username"] == user_id
    # The bootstrap password is not reset by a restart.
    assert "Bootstrap admin password" not in world.gateway.log().split("serving")[-1]

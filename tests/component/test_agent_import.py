"""``GET /v3/import/<token>.yaml`` in process: the token in the path is the credential,
checked as ``/v3/connect`` checks it (hash, expiry, rotation grace, revocation); any bad
token gets the same 404; failed guesses count against the address (429); the token is
never logged; the manifest names the gateway's URL, CA checksum and configured image."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.schema import AuthSettings, GatewaySettings, RegistrationSettings
from gateway.store.sqlite import SQLiteStore
from tests.component.test_registration_tokens import Clock, Gw, _cluster, _gateway, _registration

CA = "CA"
"""The test gateway's CA PEM (``Runtime`` in ``_gateway``)."""


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gw]:
    store = await SQLiteStore(tmp_path / "db").open()
    gw = await _gateway(store, Clock())
    try:
        yield gw
    finally:
        await gw.client.close()
        await store.close()


async def _fetch(gw: Gw, token: str) -> tuple[int, str, str]:
    resp = await gw.client.get(f"/v3/import/{token}.yaml")
    return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_the_manifest_for_a_valid_token(gw: Gw) -> None:
    cluster_id = await _cluster(gw)
    reg = await _registration(gw, cluster_id)
    assert reg["manifestUrl"] == f"https://gw.test:8443/v3/import/{reg['token']}.yaml"
    status, ctype, body = await _fetch(gw, reg["token"])
    assert status == 200 and ctype == "application/yaml", body
    docs = [d for d in yaml.safe_load_all(body) if d]
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    assert base64.b64decode(secret["data"]["token"]).decode() == reg["token"]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HERDGATE_SERVER"] == "https://gw.test:8443"
    assert env["HERDGATE_CA_CHECKSUM"] == hashlib.sha256(CA.encode()).hexdigest()
    assert container["image"] == "herdgate/agent:test"  # the gateway's version
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {
        "herdgate.io/cluster-id": cluster_id
    }


async def test_every_bad_token_gets_the_same_404(gw: Gw) -> None:
    cluster_id = await _cluster(gw)
    reg = await _registration(gw, cluster_id)
    reg_id, secret = reg["token"].split(":")
    answers = set()
    for bad in (
        f"{reg_id}:{secret[:-1]}{'y' if secret.endswith('x') else 'x'}",  # a wrong secret
        "crt-zzzzz:" + secret,  # an unknown id
        reg_id,  # no secret
        "",
        "x" * 300,
        "%00",
        "..%2f..%2fetc",
    ):
        status, _, body = await _fetch(gw, bad)
        assert status == 404, (bad, body)
        answers.add(body)
    resp = await gw.client.get(f"/v3/import/{reg['token']}")  # no .yaml
    assert resp.status == 404
    answers.add(await resp.text())
    assert len(answers) == 1, answers
    assert "registration" not in answers.pop()


async def test_expired_revoked_and_rotated_tokens(gw: Gw) -> None:
    cluster_id = await _cluster(gw)
    expiring = await _registration(gw, cluster_id, ttl=60_000)
    assert (await _fetch(gw, expiring["token"]))[0] == 200
    gw.clock.now += 61
    assert (await _fetch(gw, expiring["token"]))[0] == 404

    revoked = await _registration(gw, cluster_id)
    status, _ = await gw.call("DELETE", f"/v3/clusterregistrationtokens/{revoked['id']}")
    assert status == 200
    assert (await _fetch(gw, revoked["token"]))[0] == 404

    old = await _registration(gw, cluster_id)
    status, new = await gw.call(
        "POST",
        f"/v3/clusterregistrationtokens/{old['id']}?action=rotate",
        {"previousValidFor": "1m"},
    )
    assert status == 201 and new["manifestUrl"].endswith(f"/{new['token']}.yaml")
    assert (await _fetch(gw, old["token"]))[0] == 200  # within its grace
    assert (await _fetch(gw, new["token"]))[0] == 200
    gw.clock.now += 61
    assert (await _fetch(gw, old["token"]))[0] == 404
    assert (await _fetch(gw, new["token"]))[0] == 200

    status, _ = await gw.call("DELETE", f"/v3/clusters/{cluster_id}")
    assert status == 200
    assert (await _fetch(gw, new["token"]))[0] == 404  # its cluster is gone


async def test_failed_guesses_are_limited_per_address(tmp_path: Path) -> None:
    store = await SQLiteStore(tmp_path / "db").open()
    gw = await _gateway(store, Clock())
    try:
        limit = AuthSettings().login_failures_per_address
        cluster_id = await _cluster(gw)
        reg = await _registration(gw, cluster_id)
        for _ in range(limit):
            assert (await _fetch(gw, "crt-aaaaa:guess"))[0] == 404
        status, _, body = await _fetch(gw, reg["token"])
        assert status == 429, body  # even the right token, until the window passes
        gw.clock.now += AuthSettings().login_failure_window_s + 1
        assert (await _fetch(gw, reg["token"]))[0] == 200
    finally:
        await gw.client.close()
        await store.close()


async def test_the_token_is_never_logged(gw: Gw, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cluster_id = await _cluster(gw)
    reg = await _registration(gw, cluster_id)
    secret = reg["token"].split(":")[1]
    assert (await _fetch(gw, reg["token"]))[0] == 200
    assert (await _fetch(gw, reg["token"][:-2] + "zz"))[0] == 404
    # aiohttp's access log is the test server's (the gateway runs with access_log=None,
    # gateway.operations.server); everything else logged must not hold the token.
    text = "\n".join(r.getMessage() for r in caplog.records if r.name != "aiohttp.access")
    assert "agent manifest served" in text and "agent manifest refused" in text
    assert secret not in text and secret[:-2] not in text


async def test_the_configured_image(tmp_path: Path) -> None:
    store = await SQLiteStore(tmp_path / "db").open()
    clock = Clock()
    gw = await _gateway(store, clock)
    await gw.client.close()
    settings = dataclasses.replace(
        GatewaySettings(), registration=RegistrationSettings(agent_image="reg.local/agent:9")
    )
    from aiohttp.test_utils import TestClient

    from gateway.operations.app import build_app
    from gateway.runtime import Runtime
    from tests.component.front_server import FrontServer

    app = build_app(settings, gw.directory, Runtime("https://gw.test:8443", "", "test"))
    client: TestClient[Any, Any] = TestClient(FrontServer(app))
    await client.start_server()
    try:
        gw = Gw(client, gw.directory, clock, gw.admin)
        reg = await _registration(gw, await _cluster(gw))
        status, _, body = await _fetch(gw, reg["token"])
        assert status == 200
        docs = list(yaml.safe_load_all(body))
        for doc in docs:
            if doc["kind"] in ("Deployment", "DaemonSet"):
                container = doc["spec"]["template"]["spec"]["containers"][0]
                assert container["image"] == "reg.local/agent:9"
                assert container["imagePullPolicy"] == "IfNotPresent"
                # A publicly trusted gateway certificate: no checksum to pin.
                assert "HERDGATE_CA_CHECKSUM" not in [e["name"] for e in container["env"]]
        assert "--ca-checksum" not in reg["command"]
    finally:
        await client.close()
        await store.close()


async def test_the_manifest_carries_herdgate_roles_and_roles_managed_is_opt_in(gw: Gw) -> None:
    """The ClusterRoles of the role templates as they are now, listed in the agent's bind
    role (the agent may bind them, not write them); ``?roles=managed`` adds the right to
    write them; any other value is a 400."""
    cluster_id = await _cluster(gw)
    reg = await _registration(gw, cluster_id)
    status, template = await gw.call(
        "POST",
        "/v3/roletemplates",
        {
            "name": "Pod reader",
            "context": "cluster",
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
        },
    )
    assert status == 201, template
    role = f"herdgate-rt-{template['id']}"
    status, _, body = await _fetch(gw, reg["token"])
    assert status == 200, body
    docs = [d for d in yaml.safe_load_all(body) if d]
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    assert roles[role]["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    assert "herdgate-cluster-member" in roles
    assert role in roles["herdgate-agent-bind"]["rules"][0]["resourceNames"]
    assert "herdgate-agent-roles" not in roles
    verbs = {
        v
        for d in roles.values()
        for r in d["rules"]
        if "clusterroles" in r.get("resources", [])
        for v in r["verbs"]
    }
    assert "escalate" not in verbs and "create" not in verbs

    resp = await gw.client.get(f"/v3/import/{reg['token']}.yaml?roles=managed")
    assert resp.status == 200
    managed = [d for d in yaml.safe_load_all(await resp.text()) if d]
    names = {(d["kind"], d["metadata"]["name"]) for d in managed}
    assert ("ClusterRole", "herdgate-agent-roles") in names
    assert ("ClusterRoleBinding", "herdgate-agent-roles") in names

    resp = await gw.client.get(f"/v3/import/{reg['token']}.yaml?roles=all")
    assert resp.status == 400
    assert (await resp.json())["message"] == "roles must be 'managed' or absent"

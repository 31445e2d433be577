"""LDAP and Active Directory through the real gateway and a real slapd."""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.loader import yaml_key
from tests.binaries import kubectl
from tests.fixtures.slapd import PASSWORDS, Slapd, ad_group, ol_group, ol_user, shared_slapd
from tests.integration.conftest import World, start_world, stop_world
from tests.integration.env import ApiError, kubectl_run, wait_until, write_kubeconfig
from tests.integration.test_proxy_errors import raw_request

pytestmark = pytest.mark.integration

OPS = f"openldap_group://{ol_group('ops')}"


def as_yaml(settings: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        out[yaml_key(field)] = list(value) if isinstance(value, tuple) else value
    return out


@pytest.fixture(scope="module")
def ldap(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[World, Slapd]]:
    slapd = shared_slapd(request)
    config = {
        "auth": {
            "openldap": as_yaml(slapd.openldap_settings()),
            "activedirectory": as_yaml(slapd.activedirectory_settings()),
            "group_refresh_interval": "1s",
        }
    }
    world = start_world(
        tmp_path_factory.mktemp("ldap"), name="dir", gateway_config=yaml.safe_dump(config)
    )
    binding = world.admin.post(
        "/v3/clusterroletemplatebindings",
        {
            "clusterId": world.cluster_id,
            "groupPrincipalId": OPS,
            "roleTemplateId": "cluster-member",
        },
    )
    world.wait_synced(binding["id"])
    try:
        yield world, slapd
    finally:
        stop_world(world)


def login(world: World, provider: str, username: str, password: str) -> str:
    path = {
        "openldap": "openLdapProviders/openldap",
        "activedirectory": "activeDirectoryProviders/activedirectory",
    }[provider]
    result = world.gateway.api().post(
        f"/v3-public/{path}?action=login", {"username": username, "password": password}, token=""
    )
    return str(result["token"])


def proxied_status(world: World, token: str) -> int:
    return raw_request(world, "GET", f"/k8s/clusters/{world.cluster_id}/api", token)[0]


def test_openldap_login_groups_and_group_binding(ldap: Any) -> None:
    world, _ = ldap
    token = login(world, "openldap", "alice", PASSWORDS["alice"])
    me = world.gateway.api(token).get("/v3/users?me=true")["data"][0]
    assert me["principalIds"] == [f"openldap_user://{ol_user('alice')}"]
    assert OPS in me["groupPrincipalIds"]
    assert proxied_status(world, token) == 200  # via the binding on group ops
    bob = login(world, "openldap", "bob", PASSWORDS["bob"])
    assert proxied_status(world, bob) == 404  # not in ops: no role, the cluster is not seen


def test_active_directory_login_with_nested_groups(ldap: Any) -> None:
    world, _ = ldap
    token = login(world, "activedirectory", "dscully", PASSWORDS["dscully"])
    me = world.gateway.api(token).get("/v3/users?me=true")["data"][0]
    groups = {g.casefold() for g in me["groupPrincipalIds"]}
    assert f"activedirectory_group://{ad_group('Government')}".casefold() in groups
    with pytest.raises(ApiError) as info:
        login(world, "activedirectory", "fmulder", PASSWORDS["fmulder"])  # disabled in AD
    assert info.value.status == 401


def test_removal_from_the_group_revokes_access_after_the_refresh(ldap: Any) -> None:
    world, slapd = ldap
    token = login(world, "openldap", "alice", PASSWORDS["alice"])
    assert proxied_status(world, token) == 200
    keeper = "cn=herdgate,ou=services,dc=example,dc=org"  # groupOfNames needs a member left
    slapd.add_member(ol_group("ops"), keeper)
    try:
        with slapd.member_removed(ol_group("ops"), ol_user("alice")):
            wait_until(
                lambda: proxied_status(world, token) == 404,
                10,
                "access stayed after removal from the group",
            )
        wait_until(lambda: proxied_status(world, token) == 200, 10, "access did not come back")
    finally:
        slapd.remove_member(ol_group("ops"), keeper)


def test_ldap_down_gives_503_on_login_but_tokens_keep_working(ldap: Any) -> None:
    world, slapd = ldap
    token = login(world, "openldap", "alice", PASSWORDS["alice"])
    with slapd.stopped():
        started = time.monotonic()
        with pytest.raises(ApiError) as info:
            login(world, "openldap", "alice", PASSWORDS["alice"])
        assert info.value.status == 503 and "openldap" in info.value.body["message"]
        assert time.monotonic() - started < 15
        assert proxied_status(world, token) == 200
        time.sleep(1.5)  # a group refresh round while the directory is down changes nothing
        assert proxied_status(world, token) == 200


@pytest.mark.parametrize("username", ["*", "alice)(uid=*", "*)(|(uid=*", "al*", "alice\x00"])
def test_filter_injection_fails(ldap: Any, username: str) -> None:
    world, _ = ldap
    with pytest.raises(ApiError) as info:
        login(world, "openldap", username, PASSWORDS["alice"])
    assert info.value.status in (401, 422)


def test_kubectl_exec_plugin_shows_the_ldap_identity(ldap: Any) -> None:
    world, _ = ldap
    token = login(world, "openldap", "alice", PASSWORDS["alice"])
    me = world.gateway.api(token).get("/v3/users?me=true")["data"][0]
    config = yaml.safe_load(
        world.gateway.api(token).post(
            f"/v3/clusters/{world.cluster_id}?action=generateKubeconfig", {"credential": "exec"}
        )["config"]
    )
    exec_config = config["users"][0]["user"]["exec"]
    assert exec_config["args"][exec_config["args"].index("--provider") + 1] == "ldap"
    exec_config["env"] = [
        {"name": "HERDGATE_USERNAME", "value": "alice"},
        {"name": "HERDGATE_PASSWORD", "value": PASSWORDS["alice"]},
    ]
    kc = write_kubeconfig(world.tmp / "kubeconfig-ldap-exec", yaml.safe_dump(config))
    env_path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    os.environ["PATH"], saved = env_path, os.environ["PATH"]
    try:
        out = kubectl_run(kubectl("1.32"), kc, "auth", "whoami", "-o", "json")
    finally:
        os.environ["PATH"] = saved
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)["status"]["userInfo"]
    assert info["username"] == me["id"]
    assert OPS in info["groups"] and "herdgate:cluster-member" in info["groups"]
    assert info["extra"]["principalid"] == [f"openldap_user://{ol_user('alice')}"]


def _metrics(world: World) -> str:
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    request = urllib.request.Request(world.gateway.url + "/metrics")
    request.add_header("Authorization", f"Bearer {world.admin.token}")
    with urllib.request.urlopen(request, context=ctx, timeout=10) as resp:
        return str(resp.read().decode())


def _sample(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_ldap_logins_and_latency_are_in_the_metrics(ldap: Any) -> None:
    world, _ = ldap
    ok = 'herdgate_logins_total{provider="openldap",result="success"}'
    bad = 'herdgate_logins_total{provider="openldap",result="invalid"}'
    timed = (
        'herdgate_provider_request_duration_seconds_count{operation="login",provider="openldap"}'
    )
    before = _metrics(world)
    login(world, "openldap", "alice", PASSWORDS["alice"])
    with pytest.raises(ApiError):
        login(world, "openldap", "alice", "not-her-password")
    after = _metrics(world)
    assert _sample(after, ok) - _sample(before, ok) == 1
    assert _sample(after, bad) - _sample(before, bad) == 1
    assert _sample(after, timed) - _sample(before, timed) == 2

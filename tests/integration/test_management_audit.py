"""The audit log end to end (gateway, agent, stand-in API server): management-API
logins and changes land in the same file as proxied requests; a request made with
``kubectl --as`` names the caller and the impersonated user; a flood of unauthenticated
requests with huge client-chosen fields leaves small records."""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from tests.binaries import kubectl
from tests.integration.conftest import World
from tests.integration.downstream_rbac import apply, bind_admin_as_cluster_admin, binding
from tests.integration.env import kubectl_run, wait_until

pytestmark = pytest.mark.integration

MAX_RECORD_BYTES = 4096


def _audit_path(world: World) -> Path:
    return Path(world.gateway.state_dir) / "audit.log"


def _records(world: World) -> list[dict[str, Any]]:
    path = _audit_path(world)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_logins_and_changes_share_the_audit_log_with_proxied_requests(world: World) -> None:
    user_id, api = world.user("audited", role="read-only")  # a create, a binding, a login
    api.get(f"/k8s/clusters/{world.cluster_id}/api")

    def kinds() -> set[str]:
        return {r["kind"] for r in _records(world) if r.get("user") in (user_id, None)}

    wait_until(lambda: {"login", "request"} <= kinds(), 10, f"{kinds()}")
    records = _records(world)
    logins = [r for r in records if r["kind"] == "login" and r.get("loginName") == "audited"]
    assert logins and logins[-1]["result"] == "success" and logins[-1]["userId"] == user_id
    assert logins[-1]["sourceIP"] == "127.0.0.1" and logins[-1]["provider"] == "local"
    created = [r for r in records if r["kind"] == "management" and r.get("objectId") == user_id]
    assert created and created[0]["action"] == "create" and created[0]["username"] == "admin"
    bindings = [r for r in records if r["kind"] == "management"
                and r["resource"] == "clusterroletemplatebindings"]  # fmt: skip
    assert bindings and bindings[-1]["status"] == 201
    assert "a-long-user-password" not in _audit_path(world).read_text()


def test_kubectl_as_records_the_caller_and_the_impersonated_user(world: World) -> None:
    bind_admin_as_cluster_admin(world)  # the cluster allows the admin's --as (issue 17)
    apply(world, binding("test-audit-bob-view", "view", "impersonated-bob"))  # bob may list
    config = world.kubeconfig_for(world.admin, "audit-admin")
    out = kubectl_run(
        kubectl(), config, "get", "configmaps", "--as=impersonated-bob", "--as-group=devs"
    )
    assert out.returncode == 0, out.stderr
    admin_id = world.admin.get("/v3/users?me=true")["data"][0]["id"]

    def found() -> list[dict[str, Any]]:
        # kubectl's discovery requests carry the same --as; records are written as the
        # requests end, so not necessarily in the order kubectl sent them
        return [
            r
            for r in _records(world)
            if r.get("impersonatedUser") == "impersonated-bob" and r["resource"] == "configmaps"
        ]

    records = wait_until(found, 10, "no record of the list names the impersonated user")
    record = records[-1]
    assert record["kind"] == "request" and record["user"] == admin_id
    assert record["impersonatedGroups"] == ["devs"]
    # What the API server was asked to do: act as bob, through the agent's credential.
    seen = [e for e in world.standin.audit_events() if e.get("auditID") == record["requestId"]]
    assert seen and seen[-1]["impersonatedUser"]["username"] == "impersonated-bob", seen[-1:]


def _unauthenticated(world: World, path: str, agent: str, method: str = "GET") -> int:
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", world.gateway.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: {agent}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1]) if answer else 0


def test_a_flood_of_huge_unauthenticated_requests_leaves_small_records(world: World) -> None:
    """Client-chosen fields (user agent, path, the names read from it) are capped, so an
    unauthenticated client cannot make each of its records tens of KiB."""
    path = _audit_path(world)
    before = path.stat().st_size if path.exists() else 0
    agent = "flood-" + "U" * 30_000
    long_name = "n" * 8_000
    k8s = f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces/{'s' * 8_000}/pods/{long_name}"
    count = 60
    started = time.monotonic()
    for i in range(count):  # bounded: 60 requests, a new TLS connection each
        if i % 2:
            status = _unauthenticated(world, k8s + f"?q={'x' * 4000}", agent)
            assert status == 401, status
        else:  # aiohttp (the management API) reads at most 8190 bytes per line
            status = _unauthenticated(
                world, "/v3/users/" + long_name[:7000], agent[:8000], "DELETE"
            )
            assert status == 401, status

    def flood(kind: str) -> list[str]:
        return [
            line
            for line in path.read_text().splitlines()
            if '"userAgent":"flood-' in line and f'"kind":"{kind}"' in line
        ]

    wait_until(lambda: len(flood("request")) >= count // 2, 10, "proxied records not written")
    lines = flood("request")
    biggest = max(len(line.encode()) for line in lines)
    grown = sum(len(line.encode()) + 1 for line in lines)
    print(
        f"\n{count // 2} unauthenticated /k8s/ requests (30 KB user agent, 20 KB target) in "
        f"{time.monotonic() - started:.1f} s: {grown // len(lines)} bytes per audit record, "
        f"largest {biggest}"
    )
    assert biggest < MAX_RECORD_BYTES
    # The management API's refusals are recorded too, just as small.
    wait_until(lambda: len(flood("management")) >= count // 2, 10, "management records missing")
    lines = flood("management")
    print(f"{count // 2} unauthenticated DELETE /v3/users/<7 KB>: largest record "
          f"{max(len(line.encode()) for line in lines)} bytes")  # fmt: skip
    assert max(len(line.encode()) for line in lines) < MAX_RECORD_BYTES
    assert path.stat().st_size - before < count * MAX_RECORD_BYTES + 64 * 1024

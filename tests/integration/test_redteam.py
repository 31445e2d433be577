"""The red team's attacks end to end (gateway, tunnel, agent, stand-in API server): each
reproduces what a hostile user did, and asserts on what the API server received and on
the gateway's state afterwards, not only on status codes.

1. HTTP/2: a ``content-length`` too long to be a number (5,000 digits) raised in the
   frame parser and took the whole connection down; now a stream error only.
2. Metrics: invented cluster ids and methods became Prometheus label values.
3. Caches: long targets and field names filled the gateway's caches (hundreds of MB).
4. An admin's ``kubectl --as`` passthrough with several or empty ``Impersonate-User``.
5. Identity values with spaces at their ends, trimmed by the API server into another
   identity.
6. ``?w%61tch=1`` is a watch for kube-apiserver, so it must be one for the gateway.
7. A cluster-scoped (kubeconfig) token reading ``/metrics``.
8. A disabled user's or revoked token's open watch, exec and port-forward.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.fakes.oidc_issuer import FakeIssuer
from tests.fakes.threaded import BackgroundLoop
from tests.integration.conftest import World, start_world, stop_world
from tests.integration.env import wait_until
from tests.integration.test_hostile_h2 import (
    DATA,
    PROTOCOL_ERROR,
    RawClient,
    frame,
)
from tests.integration.test_hostile_h2_floods import gateway_pid, rss_kib
from tests.integration.test_hostile_requests import (
    assert_status,
    received,
    request,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def member(world: World) -> tuple[str, str]:
    user_id, api = world.user("red-member", role="cluster-member")
    return user_id, api.token


@pytest.fixture(scope="module")
def reader(world: World) -> tuple[str, str]:
    user_id, api = world.user("red-reader", role="read-only")
    return user_id, api.token


def _pods(world: World) -> str:
    return f"/k8s/clusters/{world.cluster_id}/api/v1/namespaces/default/pods"


# 1. HTTP/2 content-length too long for a number


@pytest.mark.parametrize(
    "length",
    [b"1" * 5000, b"9" * 30, b"0" * 5000 + b"1"],
    ids=["5000-digits", "beyond-int64", "zero-padded"],
)
def test_an_absurd_content_length_is_a_stream_error_not_a_dead_connection(
    world: World, member: tuple[str, str], length: bytes
) -> None:
    _, token = member
    probe = uuid.uuid4().hex
    client = RawClient(world)
    try:
        fields = client.get_fields((_pods(world) + "?p=" + probe).encode(), token)
        fields = [(b":method", b"POST"), *fields[1:], (b"content-length", length)]
        client.request(1, fields, end_stream=False)
        client.send(frame(DATA, 0, 1, b"{}"))
        client.wait_stream(1)
        assert client.resets.get(1) == PROTOCOL_ERROR, (client.statuses, client.goaway)
        assert client.goaway is None and not client.closed
        # The same connection goes on serving.
        client.request(3, client.get_fields(_pods(world).encode(), token))
        client.wait_stream(3)
        assert client.statuses.get(3) == 200, (client.statuses, client.resets, client.goaway)
    finally:
        client.close()
    assert not [e for e in world.standin.audit_events() if probe in json.dumps(e)]


# 2. metrics labels


def _metrics(world: World, token: str) -> str:
    req = urllib.request.Request(
        world.gateway.url + "/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        return str(resp.read().decode())


def _request_series(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("herdgate_request")]


def test_invented_clusters_and_methods_create_no_metric_series(
    world: World, member: tuple[str, str]
) -> None:
    _, token = member
    marker = uuid.uuid4().hex[:10]
    client = RawClient(world)  # HTTP/2 takes any token as a method (llhttp knows a list)
    try:
        for index in range(20):
            invented = f"c-{marker}{index}"
            request(world, "GET", f"/k8s/clusters/{invented}/api", None)
            request(world, "GET", f"/k8s/clusters/{invented}/api", token)
            for stream_id, path, bearer in (
                (4 * index + 1, f"/k8s/clusters/{world.cluster_id}/api", token),
                (4 * index + 3, _pods(world), ""),
            ):
                fields = client.get_fields(path.encode(), bearer)
                fields = [f for f in fields if bearer or f[0] != b"authorization"]
                method = f"M{marker.upper()}{stream_id}".encode()
                client.request(stream_id, [(b":method", method), *fields[1:]])
                client.wait_stream(stream_id)
                assert stream_id in client.statuses, (client.resets, client.goaway)
    finally:
        client.close()
    series = _request_series(_metrics(world, world.admin.token))
    assert not [s for s in series if marker in s.lower()], series
    assert any('cluster="other"' in s for s in series), series
    assert any('verb="other"' in s for s in series), series
    assert any(f'cluster="{world.cluster_id}"' in s for s in series), series


# 3. caches filled by long targets and names


def _many_requests(world: World, raw: list[bytes]) -> None:
    """Send each request on one keep-alive connection (reconnecting when closed), reading
    every answer."""
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    pending = list(raw)
    while pending:
        sock = ctx.wrap_socket(
            socket.create_connection(("127.0.0.1", world.gateway.port), timeout=15),
            server_hostname="127.0.0.1",
        )
        with sock:
            while pending:
                sock.sendall(pending[0])
                buffer = b""
                while b"\r\n\r\n" not in buffer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buffer += chunk
                if b"\r\n\r\n" not in buffer:
                    break  # closed: reconnect and send it again
                head, _, body = buffer.partition(b"\r\n\r\n")
                match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                length = int(match.group(1)) if match else 0
                while len(body) < length:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                pending.pop(0)
                if re.search(rb"(?i)\r\nconnection: *close", head):
                    break


def test_long_targets_and_field_names_do_not_fill_the_caches(
    world: World, reader: tuple[str, str]
) -> None:
    """Each request has a distinct ~56 KiB target (under the 64 KiB head limit), or a
    distinct ~16 KiB field name. A read-only user's DELETE is refused (403) after the
    path and the request info were read, so nothing reaches the API server; before the
    fix the path and request-info caches (4,096 entries each) and the valid-name cache
    (1,024) kept every one: 45 MB more RSS after 580 such requests, 17.5 MB after
    these 250."""
    _, token = reader
    port = world.gateway.port
    base = _pods(world)
    requests = []
    for index in range(170):
        target = f"{base}?x={index:06d}{'a' * 56 * 1024}"
        requests.append(
            f"DELETE {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
    for index in range(100):
        name = f"X-{index:06d}-{'n' * 16 * 1024}"
        requests.append(
            f"GET {base} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{name}: v\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
    _many_requests(world, requests[:20])  # warm up: buffers, code paths
    before = rss_kib(gateway_pid(world))
    _many_requests(world, requests[20:])
    after = rss_kib(gateway_pid(world))
    print(f"long targets and names: RSS {before} -> {after} KiB")
    assert after - before < 8 * 1024


# 4. an admin's kubectl --as


ADMIN_AS_REFUSED = {
    "two-users": [("Impersonate-User", "alice"), ("Impersonate-User", "bob")],
    "two-users-case": [("Impersonate-User", "alice"), ("impersonate-user", "bob")],
    "empty-user": [("Impersonate-User", "")],
    "blank-user": [("Impersonate-User", "  ")],
    "group-without-user": [("Impersonate-Group", "system:masters")],
    "uid-without-user": [("Impersonate-Uid", "1234")],
    "two-uids": [("Impersonate-User", "alice"), ("Impersonate-Uid", "1"), ("Impersonate-Uid", "2")],
    "extra-without-user": [("Impersonate-Extra-scopes", "x")],
}


@pytest.mark.parametrize("case", sorted(ADMIN_AS_REFUSED))
def test_an_admins_impersonation_must_name_one_user(world: World, case: str) -> None:
    answer, probe = request(world, "GET", _pods(world), world.admin.token, ADMIN_AS_REFUSED[case])
    assert_status(answer, 400)
    assert received(world, probe) == []


def test_an_admins_impersonation_of_one_user_passes(world: World) -> None:
    headers = [
        ("Impersonate-User", "alice"),
        ("Impersonate-Group", "devs"),
        ("Impersonate-Group", "ops"),
        ("Impersonate-Uid", "1234"),
    ]
    answer, probe = request(world, "GET", _pods(world), world.admin.token, headers)
    assert answer.status == 200, answer
    [event] = received(world, probe)
    assert event["impersonatedUser"]["username"] == "alice"


# 5. identity values with spaces at their ends


@pytest.fixture(scope="module")
def oidc_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, FakeIssuer]]:
    tmp = tmp_path_factory.mktemp("red-oidc")
    loop = BackgroundLoop()
    issuer = FakeIssuer(tmp / "issuer")
    loop.run(issuer.start())
    config = {
        "auth": {
            "oidc": {
                "enabled": True,
                "issuer_url": issuer.url,
                "client_id": issuer.client_id,
                "client_secret": issuer.client_secret,
                "ca_file": issuer.ca_file,
                "username_claim": "email",
                "groups_claim": "groups",
            }
        }
    }
    world = start_world(tmp, name="red-oidc", gateway_config=yaml.safe_dump(config))
    for group, role in (
        ("oidc_group://ops", "cluster-owner"),
        ("oidc_group://viewers", "read-only"),
    ):
        world.admin.post(
            "/v3/clusterroletemplatebindings",
            {"clusterId": world.cluster_id, "groupPrincipalId": group, "roleTemplateId": role},
        )
    try:
        yield world, issuer
    finally:
        stop_world(world)
        loop.run(issuer.stop())
        loop.close()


def test_identity_values_with_spaces_at_their_ends_are_not_trimmed_into_another(
    oidc_world: tuple[World, FakeIssuer],
) -> None:
    """The identity provider says the caller is in ``ops `` (a trailing space) and
    ``viewers``: read-only at the gateway. Sent as is, the API server trims the value
    (RFC 9110 5.5) and acts for group ``ops``, which the cluster's RBAC may bind to far
    more. The gateway sends ``ops%20``: a name no one else has."""
    world, issuer = oidc_world
    token = issuer.mint(
        sub="u-spaces", email=" mallory@example.org ", groups=["ops ", " ops", "viewers"]
    )
    answer, probe = request(world, "GET", _pods(world), token)
    assert answer.status == 200, answer
    [event] = received(world, probe)
    groups = event["impersonatedUser"]["groups"]
    assert "oidc_group://ops" not in groups, groups
    # Spaces inside a value are not trimmed, and stay.
    assert {"oidc_group://ops%20", "oidc_group:// ops", "herdgate:read-only"} <= set(groups)
    extra = event["impersonatedUser"].get("extra", {})
    assert extra.get("username") == ["%20mallory@example.org%20"], extra
    # And the gateway itself decided on read-only: a write is refused before the API server.
    answer, probe = request(world, "DELETE", f"{_pods(world)}/x", token)
    assert_status(answer, 403)
    assert received(world, probe) == []


# 6. query names decoded as kube-apiserver decodes them


def _audit_lines(world: World) -> list[dict[str, Any]]:
    path = world.gateway.state_dir / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _open_stream(world: World, target: str, token: str) -> ssl.SSLSocket:
    """A raw HTTP/1.1 GET whose answer's head has arrived (the body keeps coming)."""
    ctx = ssl.create_default_context(cafile=str(world.gateway.ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    sock = ctx.wrap_socket(
        socket.create_connection(("127.0.0.1", world.gateway.port), timeout=10),
        server_hostname="127.0.0.1",
    )
    sock.sendall(
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{world.gateway.port}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


@pytest.mark.parametrize("query", ["w%61tch=1", "%77atch=true", "watch=1&w%61tch=0"])
def test_an_encoded_watch_is_a_watch_for_the_gateway_too(
    world: World, member: tuple[str, str], query: str
) -> None:
    """kube-apiserver decodes query names: ``?w%61tch=1`` is a watch. The gateway read it
    as a list: not long-running, so not ended by a stopping gateway or a revocation, and
    audited and counted as ``list``."""
    _, token = member
    marker = uuid.uuid4().hex
    target = f"{_pods(world)}?{query}&labelSelector=m%3D{marker}"
    with _open_stream(world, target, token):
        pass  # the client goes away: the gateway finishes the request (499)
    [event] = wait_until(
        lambda: [e for e in world.standin.audit_events() if marker in json.dumps(e)],
        10,
        "the API server saw nothing",
    )
    assert event["verb"] == "watch"
    record = wait_until(
        lambda: [r for r in _audit_lines(world) if marker in r.get("path", "")],
        10,
        "no audit record",
    )
    assert [r["verb"] for r in record] == ["watch"], record


# 7. /metrics with a cluster-scoped token


def test_a_cluster_scoped_admin_token_cannot_read_metrics(world: World) -> None:
    config = world.admin.post(f"/v3/clusters/{world.cluster_id}?action=generateKubeconfig")
    scoped = yaml.safe_load(config["config"])["users"][0]["user"]["token"]
    assert _metrics(world, world.admin.token)  # the admin's own login token may
    with pytest.raises(urllib.error.HTTPError) as refused:
        _metrics(world, scoped)
    assert refused.value.code == 403
    refused.value.close()

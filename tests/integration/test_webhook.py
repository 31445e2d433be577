"""Direct cluster access: the stand-in API server asks a real `herdgate webhook` process.

One world per module (tests/integration/webhook_env.py): stand-in with
--authentication-token-webhook-version v1 and a 1 s cache TTL, the webhook watching
records in the stand-in itself, CRDs from deploy/crds.yaml applied with kubectl.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ace.records import TOKEN_PLURAL
from standin.harness import run_kubectl
from tests.binaries import kubectl
from tests.integration.env import free_port, wait_until
from tests.integration.webhook_env import (
    Credential,
    WebhookProcess,
    WebhookWorld,
    apiserver_webhook_file,
    http_json,
    rfc3339,
    start_standin,
    start_webhook_world,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

VERSIONS = ["1.32", "1.27"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookWorld]:
    w = start_webhook_world(tmp_path_factory.mktemp("webhook"), kubectl("1.32"))
    try:
        yield w
    finally:
        w.stop()
    assert "Traceback" not in w.webhook.log(), w.webhook.log()


@pytest.mark.parametrize("version", VERSIONS)
def test_kubectl_with_only_a_herdgate_token(world: WebhookWorld, version: str) -> None:
    cred = world.new_user()
    kc = world.kubeconfig_for(cred)
    result = run_kubectl(kubectl(version), kc, "auth", "whoami", "-o", "json")
    assert result.returncode == 0, result.stderr + world.webhook.log()[-2000:]
    info = json.loads(result.stdout)["status"]["userInfo"]
    assert info["username"] == cred.user_id
    assert info["uid"] == cred.user_id
    assert info["groups"] == ["local://g-devs", "herdgate:cluster-member", "system:authenticated"]
    n = cred.user_id.removeprefix("u-").lstrip("0")
    assert info["extra"] == {"username": [f"user{n}"], "principalid": [f"local://{cred.user_id}"]}
    pods = run_kubectl(kubectl(version), kc, "get", "pods")
    assert pods.returncode == 0, pods.stderr
    # The token never shows up in what the webhook logged.
    assert cred.secret not in world.webhook.log()


def test_wrong_secret_and_unknown_token_are_refused(world: WebhookWorld) -> None:
    cred = world.new_user()
    assert world.get_pods(cred.bearer) == 200
    assert world.get_pods(f"{cred.token_id}:{cred.secret[:-1]}") == 401
    assert world.get_pods(f"token-zzzzz:{cred.secret}") == 401
    assert world.get_pods("not-a-herdgate-token") == 401
    kc = world.kubeconfig_for(Credential(cred.token_id, "wrong", cred.user_id))
    result = run_kubectl(kubectl("1.32"), kc, "get", "pods")
    assert result.returncode != 0 and "must be logged in" in result.stderr


def test_deleted_token_is_refused_within_5s(world: WebhookWorld) -> None:
    cred = world.new_user()
    assert world.get_pods(cred.bearer) == 200
    world.delete(TOKEN_PLURAL, cred.token_id)
    took = world.wait_refused(cred.bearer)
    assert took < 5
    # the webhook itself refuses at once (the rest is the API server's 1 s cache)
    status, body = world.webhook.review(cred.bearer)
    assert status == 200 and body["status"] == {"authenticated": False, "error": "unknown token"}


def test_disabled_token_is_refused_and_can_come_back(world: WebhookWorld) -> None:
    cred = world.new_user()
    assert world.get_pods(cred.bearer) == 200
    world.patch_token(cred.token_id, {"enabled": False})
    assert world.wait_refused(cred.bearer) < 5
    world.patch_token(cred.token_id, {"enabled": True})
    wait_until(lambda: world.get_pods(cred.bearer) == 200, 5, "not accepted again")


def test_disabled_user_is_refused(world: WebhookWorld) -> None:
    cred = world.new_user()
    assert world.get_pods(cred.bearer) == 200
    world.put_user(cred.user_id, "whoever", enabled=False)
    assert world.wait_refused(cred.bearer) < 5
    status, body = world.webhook.review(cred.bearer)
    assert status == 200 and body["status"]["error"] == "user is not enabled"


def test_expired_tokens_are_refused(world: WebhookWorld) -> None:
    past = world.new_user(expires_at="2020-01-01T00:00:00Z")
    assert world.get_pods(past.bearer) == 401
    # A token that runs out with no change to any record: the clock alone refuses it.
    soon = world.new_user(expires_at=rfc3339(2.0))
    assert world.get_pods(soon.bearer) == 200
    assert world.wait_refused(soon.bearer, timeout=5) < 5
    assert world.webhook.review(soon.bearer)[1]["status"]["error"] == "token has expired"


def _post(port: int, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/authenticate", body=body, headers=headers or {})
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    return resp.status, json.loads(payload)


def test_malformed_requests_get_well_formed_errors(world: WebhookWorld) -> None:
    port = world.webhook.port
    cases: dict[str, tuple[bytes, int]] = {
        "empty": (b"", 400),
        "not json": (b"{{{", 400),
        "wrong kind": (b'{"kind":"Pod","apiVersion":"v1"}', 400),
        "wrong version": (
            b'{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v2","spec":{"token":"a:b"}}',
            400,
        ),
        "empty token": (
            b'{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","spec":{"token":""}}',
            400,
        ),
        "huge": (b'{"kind":"TokenReview","x":"' + b"x" * (2 * 1024 * 1024) + b'"}', 413),
        "deeply nested": (b"[" * 200_000 + b"]" * 200_000, 400),
    }
    for name, (body, code) in cases.items():
        status, answer = _post(port, body, {"Content-Type": "application/json"})
        assert status == code, (name, answer)
        assert isinstance(answer, dict) and answer["kind"] == "Status" and answer["code"] == code
    # a huge chunked body, without Content-Length
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        chunks = (b"x" * 65536 for _ in range(40))
        conn.request("POST", "/v1/authenticate", body=chunks, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413
        resp.read()
    finally:
        conn.close()
    # a client that sends half a request and vanishes
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /v1/authenticate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    status, answer = http_json(world.webhook.url + "/v1/authenticate", "GET")
    assert status == 405 and isinstance(answer, dict) and answer["kind"] == "Status"
    # still running, still healthy, still answering
    assert world.webhook.alive()
    assert world.webhook.health() == 200
    cred = world.new_user()
    wait_until(lambda: world.webhook.review(cred.bearer)[1]["status"]["authenticated"], 5, "no")
    assert world.get_pods(cred.bearer) == 200


def test_v1beta1_reviews(world: WebhookWorld, tmp_path: Path) -> None:
    """A second stand-in that speaks v1beta1 to the same webhook."""
    webhook_file = apiserver_webhook_file(
        tmp_path / "webhook.yaml", world.webhook.url + "/v1/authenticate"
    )
    other = start_standin(tmp_path / "apiserver", webhook_file, version="v1beta1")
    try:
        cred = world.new_user()
        kc = other.kubeconfig(tmp_path / "kubeconfig", token=cred.bearer)
        result = run_kubectl(kubectl("1.32"), kc, "auth", "whoami", "-o", "json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["status"]["userInfo"]["username"] == cred.user_id
        status, body = world.webhook.review(cred.bearer, version="v1beta1")
        assert status == 200
        assert body["apiVersion"] == "authentication.k8s.io/v1beta1"
        assert body["status"]["authenticated"] is True
    finally:
        other.stop()


def test_sigterm_stops_promptly(world: WebhookWorld, tmp_path: Path) -> None:
    """A second webhook process on the same records becomes healthy and exits 0 on SIGTERM."""
    extra = WebhookProcess(free_port(), world.webhook.kubeconfig, tmp_path / "w2.log").start()
    try:
        extra.wait_healthy()
        started = time.monotonic()
        assert extra.stop() == 0
        assert time.monotonic() - started < 5
    finally:
        extra.stop()

"""A stand-in API server that asks a real ``herdgate webhook`` process about tokens.

start_webhook_world(tmp) starts, in this order: the stand-in (its
--authentication-token-webhook-config-file points at a free loopback port), the webhook
(a subprocess with a read-only kubeconfig for the stand-in; it backs off until the CRDs
exist), then applies deploy/crds.yaml with real kubectl and waits for /healthz. The world
writes records like the gateway will (hashes from gateway.identity.hashing) and makes kubeconfigs
that hold only ``token-xxxxx:<secret>``.

A gateway's cluster with direct access (the authorized cluster endpoint), as
test_ace.py and test_kubeconfigs.py build it: ace_standin (the cluster's API server:
the agent's and the webhook's rights, RBAC enforced, unknown tokens asked of the webhook),
ace_endpoint (the cluster's ``localClusterAuthEndpoint``), start_cluster_webhook (the
webhook reading the records the gateway writes there) and webhook_healthy.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ace import manifests
from ace.records import GROUP, TOKEN_PLURAL, USER_PLURAL, VERSION
from gateway.identity import hashing
from standin.harness import StandInProcess, run_kubectl
from tests.integration.conftest import (
    AGENT_SA_GROUPS,
    AGENT_SA_TOKEN,
    AGENT_SA_USER,
    CLUSTER_ADMIN_TOKEN,
    agent_objects,
)
from tests.integration.env import Agent, free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "herdgate-system"
ADMIN_TOKEN = "standin-admin-token"
READER_TOKEN = "webhook-reader-token"
READER_USER = f"system:serviceaccount:{NAMESPACE}:herdgate-webhook"


def http_json(
    url: str,
    method: str = "GET",
    body: Any = None,
    *,
    token: str | None = None,
    ca_file: Path | None = None,
    raw: bytes | None = None,
    content_type: str = "application/json",
    timeout: float = 10.0,
) -> tuple[int, Any]:
    """One request; returns (status, parsed JSON or text). Never raises for HTTP errors."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", content_type)
    ctx = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=timeout) as resp:
            status, payload = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, payload.decode(errors="replace")


@dataclass
class WebhookProcess:
    port: int
    kubeconfig: Path
    log_file: Path
    env: dict[str, str] = field(default_factory=dict)
    log_level: str = "debug"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WebhookProcess:
        cmd = [
            sys.executable, "-m", "herdgate", "webhook",
            "--listen", f"127.0.0.1:{self.port}",
            "--kubeconfig", str(self.kubeconfig),
            "--namespace", NAMESPACE,
            "--log-level", self.log_level,
        ]  # fmt: skip
        env = {
            **os.environ,
            "HERDGATE_BACKOFF_INITIAL": "100ms",
            "HERDGATE_BACKOFF_MAX": "500ms",
            # Short watches, so the tests also run across watch ends and resumptions.
            "HERDGATE_WATCH_TIMEOUT": "2s",
            **self.env,
        }
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self

    def health(self) -> int:
        """The /healthz status, or 0 when nothing answers."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"webhook exited ({self.process.returncode}):\n{self.log()}")
        try:
            return http_json(self.url + "/healthz", timeout=2)[0]
        except OSError:
            return 0

    def wait_healthy(self, timeout: float = 15.0) -> None:
        wait_until(lambda: self.health() == 200, timeout, f"webhook not healthy:\n{self.log()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def review(self, token: str, version: str = "v1") -> tuple[int, Any]:
        body = {
            "kind": "TokenReview",
            "apiVersion": f"authentication.k8s.io/{version}",
            "metadata": {"creationTimestamp": None},
            "spec": {"token": token},
            "status": {"user": {}},
        }
        return http_json(self.url + "/v1/authenticate", "POST", body)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        code = self.process.returncode
        self.process = None
        return code

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def apiserver_webhook_file(path: Path, webhook_url: str) -> Path:
    path.write_text(yaml.safe_dump(manifests.apiserver_webhook_config(webhook_url)))
    return path


def start_standin(
    workdir: Path, webhook_file: Path, version: str = "v1", ttl: str = "1s"
) -> StandInProcess:
    return StandInProcess.start(
        workdir,
        tokens={
            ADMIN_TOKEN: ("standin-admin", "uid-admin", ["system:masters"]),
            READER_TOKEN: (READER_USER, "uid-webhook", ["system:serviceaccounts"]),
        },
        # no gateway or agent here: these worlds test authentication on the direct path
        authorization_mode="AlwaysAllow",
        args=[
            "--authentication-token-webhook-config-file", str(webhook_file),
            "--authentication-token-webhook-version", version,
            "--authentication-token-webhook-cache-ttl", ttl,
        ],
    )  # fmt: skip


@dataclass
class Credential:
    token_id: str
    secret: str
    user_id: str

    @property
    def bearer(self) -> str:
        return f"{self.token_id}:{self.secret}"


@dataclass
class WebhookWorld:
    tmp: Path
    standin: StandInProcess
    webhook: WebhookProcess
    admin_kubeconfig: Path
    counter: int = 0

    # -- the stand-in's REST API, as the admin -------------------------------------------
    def api(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return http_json(
            self.standin.url + path,
            method,
            body,
            token=ADMIN_TOKEN,
            ca_file=self.standin.ca_file,
            **kw,
        )

    def _collection(self, plural: str) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{plural}"

    def _put(self, plural: str, kind: str, name: str, fields: dict[str, Any]) -> None:
        obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}}
        status, body = self.api("POST", self._collection(plural), {**obj, **fields})
        if status == 409:
            status, body = self.api(
                "PATCH",
                f"{self._collection(plural)}/{name}",
                raw=json.dumps(fields).encode(),
                content_type="application/merge-patch+json",
            )
        assert status in (200, 201), (status, body)

    def put_user(
        self,
        user_id: str,
        username: str,
        groups: Sequence[str] = ("herdgate:cluster-member",),
        enabled: bool = True,
    ) -> None:
        self._put(
            USER_PLURAL,
            "ClusterUserAttribute",
            user_id,
            {
                "username": username,
                "principalId": f"local://{user_id}",
                "groups": list(groups),
                "enabled": enabled,
            },
        )

    def put_token(
        self, token_id: str, user_id: str, secret: str, enabled: bool = True, expires_at: str = ""
    ) -> None:
        self._put(
            TOKEN_PLURAL,
            "ClusterAuthToken",
            token_id,
            {
                "userName": user_id,
                "hash": hashing.hash_token(secret),
                "expiresAt": expires_at,
                "enabled": enabled,
            },
        )

    def patch_token(self, token_id: str, fields: dict[str, Any]) -> None:
        self._put(TOKEN_PLURAL, "ClusterAuthToken", token_id, fields)

    def delete(self, plural: str, name: str) -> None:
        status, body = self.api("DELETE", f"{self._collection(plural)}/{name}")
        assert status in (200, 202), (status, body)

    def new_user(
        self,
        groups: Sequence[str] = ("local://g-devs", "herdgate:cluster-member"),
        expires_at: str = "",
    ) -> Credential:
        """A user record and one token for it (ids unique within the world)."""
        self.counter += 1
        user_id = f"u-{self.counter:05d}"
        self.put_user(user_id, f"user{self.counter}", groups)
        cred = Credential(f"token-{self.counter:05d}", hashing.new_secret(), user_id)
        self.put_token(cred.token_id, user_id, cred.secret, expires_at=expires_at)
        return cred

    # -- what a user sees ----------------------------------------------------------------
    def get_pods(self, bearer: str) -> int:
        """Status of a GET straight to the API server with only this bearer token."""
        return http_json(
            self.standin.url + "/api/v1/namespaces/default/pods",
            token=bearer,
            ca_file=self.standin.ca_file,
        )[0]

    def kubeconfig_for(self, cred: Credential) -> Path:
        return self.standin.kubeconfig(self.tmp / f"kubeconfig-{cred.token_id}", token=cred.bearer)

    def wait_refused(self, bearer: str, timeout: float = 5.0) -> float:
        """Seconds until the API server refuses ``bearer`` (401)."""
        start = time.monotonic()
        wait_until(
            lambda: self.get_pods(bearer) == 401,
            timeout,
            f"still accepted after {timeout}s:\n{self.webhook.log()[-3000:]}",
            interval=0.1,
        )
        return time.monotonic() - start

    def stop(self) -> None:
        for stop in (self.webhook.stop, self.standin.stop):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"teardown: {exc}")


def rfc3339(seconds_from_now: float) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds_from_now)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def start_webhook_world(
    tmp: Path,
    kubectl_binary: str | None,
    version: str = "v1",
    log_level: str = "debug",
    env: dict[str, str] | None = None,
) -> WebhookWorld:
    """kubectl_binary None: create the CRDs through the REST API instead of kubectl apply."""
    port = free_port()
    webhook_file = apiserver_webhook_file(
        tmp / "kube-api-authn-webhook.yaml", f"http://127.0.0.1:{port}/v1/authenticate"
    )
    standin = start_standin(tmp / "apiserver", webhook_file, version)
    webhook: WebhookProcess | None = None
    try:
        admin = standin.kubeconfig(tmp / "admin.kubeconfig", token=ADMIN_TOKEN)
        reader = standin.kubeconfig(tmp / "reader.kubeconfig", token=READER_TOKEN)
        webhook = WebhookProcess(
            port, reader, tmp / "webhook.log", env=dict(env or {}), log_level=log_level
        ).start()
        world = WebhookWorld(tmp, standin, webhook, admin)
        # Nothing to list yet: the webhook backs off and is not ready.
        wait_until(lambda: webhook.health() == 503, 10, f"no 503 first:\n{webhook.log()}")
        status, body = world.api("POST", "/api/v1/namespaces", manifests.namespace(NAMESPACE))
        assert status == 201, body
        if kubectl_binary is None:
            for crd in manifests.crds():
                path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
                status, body = world.api("POST", path, crd)
                assert status == 201, body
        else:
            applied = run_kubectl(
                kubectl_binary, admin, "apply", "-f", str(REPO_ROOT / "deploy" / "crds.yaml")
            )
            assert applied.returncode == 0, applied.stderr
        webhook.wait_healthy()
        return world
    except BaseException:
        if webhook is not None:
            webhook.stop()
        standin.stop()
        raise


# -- a gateway's cluster with direct access ----------------------------------------------


def ace_standin(workdir: Path, webhook_port: int | None) -> StandInProcess:
    """A gateway's cluster's API server: the agent's service account and a cluster
    administrator (``CLUSTER_ADMIN_TOKEN``) with the manifests' rights and nothing more,
    RBAC enforced. With ``webhook_port``, also the webhook's reader (its read-only Role on
    the two record kinds, ace.manifests.rbac) and any other token asked of the webhook
    there (start_cluster_webhook); without, no direct access."""
    tokens = {
        AGENT_SA_TOKEN: (AGENT_SA_USER, "uid-agent", list(AGENT_SA_GROUPS)),
        CLUSTER_ADMIN_TOKEN: ("cluster-admin", "uid-admin", ["system:masters"]),
    }
    objects = agent_objects()
    args: list[str] = []
    if webhook_port is not None:
        tokens[READER_TOKEN] = (
            READER_USER,
            "uid-r",
            ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"],
        )
        objects = [*objects, *manifests.rbac()]
        workdir.mkdir(parents=True, exist_ok=True)
        webhook_file = apiserver_webhook_file(
            workdir / "kube-api-authn-webhook.yaml",
            f"http://127.0.0.1:{webhook_port}/v1/authenticate",
        )
        args = [
            "--authentication-token-webhook-config-file", str(webhook_file),
            "--authentication-token-webhook-version", "v1",
            "--authentication-token-webhook-cache-ttl", "1s",
        ]  # fmt: skip
    return StandInProcess.start(workdir / "apiserver", tokens=tokens, args=args, objects=objects)


def ace_endpoint(standin: StandInProcess) -> dict[str, Any]:
    """The cluster's ``localClusterAuthEndpoint``: on, at the stand-in, its CA."""
    return {
        "enabled": True,
        "fqdn": f"127.0.0.1:{standin.url.rsplit(':', 1)[1]}",
        "caCerts": standin.ca_file.read_text(),
    }


def start_cluster_webhook(workdir: Path, standin: StandInProcess, port: int) -> Agent:
    """``herdgate webhook`` beside ``standin`` on ``port``, reading the records with the
    reader's token (not yet healthy: see webhook_healthy)."""
    reader = standin.kubeconfig(workdir / "webhook-reader-kubeconfig", token=READER_TOKEN)
    return Agent(
        [sys.executable, "-m", "herdgate", "webhook",
         "--listen", f"127.0.0.1:{port}", "--kubeconfig", str(reader)],
        workdir / "webhook.log",
    ).start()  # fmt: skip


def webhook_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False

"""One kubeconfig for several clusters (``POST /v3/kubeconfigs``), with the real kubectl.

The world: one gateway and three clusters, each its own stand-in API server and agent;
alpha and beta have the authorized cluster endpoint (a real ``herdgate webhook`` beside
their stand-in, as tests/integration/test_ace.py runs it), gamma has not. Users are bound
to alpha and beta and not to gamma.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.kubeconfig_merge import dump, load, merge
from standin.harness import StandInProcess
from tests.binaries import kubectl
from tests.integration.conftest import (
    AGENT_SA_TOKEN,
    CLUSTER_ADMIN_TOKEN,
    USER_PASSWORD,
)
from tests.integration.env import (
    REPO_ROOT,
    Agent,
    Api,
    Gateway,
    agent_command,
    free_port,
    kubectl_run,
    wait_until,
    write_kubeconfig,
)
from tests.integration.webhook_env import (
    ace_endpoint,
    ace_standin,
    start_cluster_webhook,
    webhook_healthy,
)

pytestmark = pytest.mark.integration
NAMES = ("alpha", "beta", "gamma")
ACE = ("alpha", "beta")
LOGGED_OUT = "You must be logged in to the server"
"""What kubectl says of a 401."""


@dataclass
class Downstream:
    name: str
    id: str
    standin: StandInProcess
    agent: Agent
    webhook: Agent | None
    webhook_port: int


@dataclass
class Multi:
    tmp: Path
    gateway: Gateway
    admin: Api
    clusters: dict[str, Downstream]

    def id(self, name: str) -> str:
        return self.clusters[name].id

    def user(self, name: str, bound_to: tuple[str, ...]) -> tuple[str, Api]:
        """A user bound (cluster-member) to ``bound_to``, once each cluster's RBAC has it;
        ``tmp/<name>`` holds the user's files."""
        (self.tmp / name).mkdir()  # the user's files
        created = self.admin.post("/v3/users", {"username": name, "password": USER_PASSWORD})
        for cluster in bound_to:
            self.bind(created["id"], cluster)
        api = self.gateway.api()
        api.token = api.login(name, USER_PASSWORD)
        return str(created["id"]), api

    def bind(self, user_id: str, cluster: str) -> str:
        binding = self.admin.post(
            "/v3/clusterroletemplatebindings",
            {"clusterId": self.id(cluster), "userId": user_id, "roleTemplateId": "cluster-member"},
        )
        selector = urllib.parse.quote(f"herdgate.dev/binding={binding['id'].rpartition(':')[2]}")
        path = f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings?labelSelector={selector}"
        wait_until(
            lambda: self.downstream(cluster, path)["items"],
            15,
            f"binding never reached {cluster}'s RBAC",
            interval=0.1,
        )
        return str(binding["id"])

    def downstream(self, cluster: str, path: str) -> Any:
        """GET from a cluster's stand-in as its own administrator."""
        standin = self.clusters[cluster].standin
        kc = self.tmp / f"{cluster}-admin-kubeconfig"
        if not kc.exists():
            standin.kubeconfig(kc, token=CLUSTER_ADMIN_TOKEN)
        out = kubectl_run(kubectl(), kc, "get", "--raw", path, home=self.tmp / "home-admin")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def ace_token_ids(self, cluster: str) -> set[str]:
        listed = self.downstream(
            cluster, "/apis/auth.herdgate.dev/v1/namespaces/herdgate-system/clusterauthtokens"
        )
        return {item["metadata"]["name"] for item in listed["items"]}


def start_downstream(tmp: Path, admin: Api, name: str, ace: bool) -> Downstream:
    """A stand-in API server, its cluster in the gateway and its agent; with ``ace``, the
    stand-in asks a webhook about tokens and the cluster's direct endpoint is on."""
    webhook_port = free_port()
    standin = ace_standin(tmp, webhook_port if ace else None)
    body: dict[str, Any] = {"name": name}
    if ace:
        body["localClusterAuthEndpoint"] = ace_endpoint(standin)
    cluster = admin.post("/v3/clusters", body)
    reg = admin.post("/v3/clusterregistrationtokens", {"clusterId": cluster["id"]})
    agent_kc = standin.kubeconfig(tmp / "agent-kubeconfig", token=AGENT_SA_TOKEN)
    agent = Agent(agent_command(reg["command"], agent_kc), tmp / "agent.log").start()
    webhook = start_cluster_webhook(tmp, standin, webhook_port) if ace else None
    return Downstream(name, str(cluster["id"]), standin, agent, webhook, webhook_port)


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Multi]:
    tmp = tmp_path_factory.mktemp("kubeconfigs")
    gateway = Gateway(tmp / "gateway", free_port(), tmp / "gateway.log").start()
    clusters: dict[str, Downstream] = {}
    try:
        admin = gateway.admin()
        for name in NAMES:
            (tmp / name).mkdir()
            clusters[name] = start_downstream(tmp / name, admin, name, name in ACE)
        world = Multi(tmp, gateway, admin, clusters)
        for name in NAMES:
            wait_until(
                lambda name=name: admin.get(f"/v3/clusters/{world.id(name)}")["state"] == "active",
                30,
                f"cluster {name} never became active",
            )
        for name in ACE:
            port = clusters[name].webhook_port
            wait_until(lambda port=port: webhook_healthy(port), 20, "webhook never healthy")
        yield world
    finally:
        for downstream in clusters.values():
            for process in (downstream.webhook, downstream.agent):
                if process is not None:
                    process.stop()
        gateway.stop()
        for downstream in clusters.values():
            downstream.standin.stop()


def run(kc: Path, context: str, *args: str, home: str = "home") -> Any:
    return kubectl_run(kubectl(), kc, "--context", context, *args, home=kc.parent / home)


def whoami(kc: Path, context: str, home: str = "home") -> str | None:
    out = run(kc, context, "auth", "whoami", "-o", "json", home=home)
    if out.returncode != 0:
        return None
    return str(json.loads(out.stdout)["status"]["userInfo"]["username"])


def token_of(doc: dict[str, Any]) -> str:
    tokens = {u["user"]["token"] for u in doc["users"]}
    assert len(tokens) == 1, tokens
    return str(tokens.pop())


def foreign_kubeconfig(multi: Multi, token: str, cluster: str, path: Path) -> Path:
    """The gateway's context for ``cluster`` holding ``token`` (made by hand: the token
    was not made for it)."""
    ca = multi.gateway.ca_file.read_bytes()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {
                    "server": f"{multi.gateway.url}/k8s/clusters/{multi.id(cluster)}",
                    "certificate-authority-data": base64.b64encode(ca).decode(),
                },
            }
        ],
        "users": [{"name": cluster, "user": {"token": token}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": cluster}}],
        "current-context": cluster,
    }
    return write_kubeconfig(path, dump(doc))


def test_star_is_exactly_the_bound_clusters_with_one_token_that_works_on_each(
    multi: Multi,
) -> None:
    user_id, api = multi.user("mia", ("alpha", "beta"))
    answer = api.post("/v3/kubeconfigs", {"clusters": ["*"]})
    doc = yaml.safe_load(answer["config"])
    assert [c["name"] for c in doc["contexts"]] == ["alpha", "alpha@fqdn", "beta", "beta@fqdn"]
    assert doc["current-context"] == "alpha"
    token = token_of(doc)
    kc = write_kubeconfig(multi.tmp / "mia" / "config", answer["config"])
    for context in ("alpha", "beta"):
        assert whoami(kc, context) == user_id, context
        out = run(kc, context, "get", "pods")
        assert out.returncode == 0, out.stderr
    # The direct contexts: the ACE sync wrote the one token into each of its clusters.
    for context, cluster in (("alpha@fqdn", "alpha"), ("beta@fqdn", "beta")):
        assert wait_until(lambda c=context: whoami(kc, c), 10, f"{context} never worked") == user_id
        assert answer["tokenId"] in multi.ace_token_ids(cluster)
    # Not valid for gamma, through the gateway.
    other = foreign_kubeconfig(multi, token, "gamma", multi.tmp / "mia" / "gamma")
    out = run(other, "gamma", "get", "pods")
    assert out.returncode != 0 and LOGGED_OUT in out.stderr, out.stderr


def test_later_binding_lost_binding_and_merging_a_later_cluster(multi: Multi) -> None:
    user_id, api = multi.user("noa", ("alpha", "beta"))
    first = api.post("/v3/kubeconfigs", {"clusters": ["*"]})
    path = write_kubeconfig(multi.tmp / "noa" / "config", first["config"])
    old = load(path.read_text())
    token = token_of(old)
    # Bound to gamma later: the token stays scoped to what it was made for...
    multi.bind(user_id, "gamma")
    other = foreign_kubeconfig(multi, token, "gamma", multi.tmp / "noa" / "gamma")
    out = run(other, "gamma", "get", "pods")
    assert out.returncode != 0 and LOGGED_OUT in out.stderr, out.stderr
    # ...and a kubeconfig for gamma merged into the file adds gamma's entries, no others.
    later = api.post("/v3/kubeconfigs", {"clusters": ["gamma"]})
    merged = merge(old, load(later["config"]))
    path.write_text(dump(merged))
    for key in ("clusters", "users", "contexts"):
        names = [e["name"] for e in merged[key]]
        assert names == [e["name"] for e in old[key]] + ["gamma"], (key, names)
        assert merged[key][: len(old[key])] == old[key]
    assert merged["current-context"] == "alpha"
    assert merge(merged, load(later["config"])) == merged
    for context in ("alpha", "beta", "gamma"):
        assert whoami(path, context) == user_id, context
    # Losing beta: refused there, and by beta's direct endpoint once its record is gone.
    assert wait_until(lambda: whoami(path, "beta@fqdn"), 10, "beta@fqdn never worked")
    binding = next(
        b["id"]
        for b in multi.admin.get(f"/v3/clusterroletemplatebindings?clusterId={multi.id('beta')}")[
            "data"
        ]
        if b["userId"] == user_id
    )
    multi.admin.delete(f"/v3/clusterroletemplatebindings/{binding}")
    out = run(path, "beta", "get", "pods")
    # The gateway answers as for a cluster that does not exist (it names nothing).
    assert out.returncode != 0 and "NotFound" in out.stderr, out.stderr
    wait_until(lambda: whoami(path, "beta@fqdn") is None, 10, "beta@fqdn still accepted")
    assert first["tokenId"] not in multi.ace_token_ids("beta")
    assert first["tokenId"] in multi.ace_token_ids("alpha")
    assert whoami(path, "alpha") == user_id and whoami(path, "alpha@fqdn") == user_id


def test_exec_kubeconfig_says_how_to_install_and_logs_in_once_for_all(
    multi: Multi, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_id, api = multi.user("ola", ("alpha", "beta"))
    answer = api.post("/v3/kubeconfigs", {"clusters": ["*"], "credential": "exec"})
    kc = write_kubeconfig(multi.tmp / "ola" / "config", answer["config"])
    monkeypatch.setenv("HERDGATE_USERNAME", "ola")
    monkeypatch.setenv("HERDGATE_PASSWORD", USER_PASSWORD)
    # `herdgate` not on PATH (as after a virtualenv install): kubectl shows the hint.
    empty = multi.tmp / "ola" / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{empty}:/usr/bin:/bin")
    assert shutil.which("herdgate") is None
    out = run(kc, "alpha", "get", "pods", home="home-exec")
    assert out.returncode != 0
    assert "executable herdgate not found" in out.stderr, out.stderr
    assert "ln -s <venv>/bin/herdgate ~/.local/bin/herdgate" in out.stderr, out.stderr
    # On PATH (this checkout's herdgate): one login, scoped to alpha and beta, serves both.
    bin_dir = multi.tmp / "ola" / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "herdgate"
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH={REPO_ROOT} exec {sys.executable} -m herdgate "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for context in ("alpha", "beta"):
        assert whoami(kc, context, home="home-exec") == user_id, context
    logins = [
        t for t in api.get("/v3/tokens")["data"] if t["description"] == "kubectl (herdgate login)"
    ]
    assert len(logins) == 1, logins
    assert logins[0]["clusterIds"] == [multi.id("alpha"), multi.id("beta")]
    assert len(list((kc.parent / "home-exec" / ".herdgate" / "cache").glob("*.json"))) == 1
    # The direct context uses the same cached login, synced to the cluster like any token.
    found = wait_until(lambda: whoami(kc, "beta@fqdn", home="home-exec"), 10, "beta@fqdn")
    assert found == user_id

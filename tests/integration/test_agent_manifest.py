"""Registration in one command, end to end: the real kubectl applies the manifest the
gateway serves at ``/v3/import/<token>.yaml`` to the stand-in API server, and an agent
started exactly as the Deployment's container says (command, args, environment with the
token read back from the Secret, the service-account files a pod gets, with a token
minted by ``kubectl create token``) connects: the cluster turns ``active``, its probes
answer, ``/metrics`` parses and counts.

The agent authenticates to the stand-in as its service account, with the service-account
groups only (never ``system:masters``); the stand-in lets that user impersonate
(``--impersonator-users``), as the ClusterRole in the manifest lets it once the stand-in
decides by RBAC.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.clusters.agent_manifest import CLUSTER_AGENT, NODE_AGENT, TOKEN_SECRET
from gateway.clusters.agent_rbac import AGENT_SERVICE_ACCOUNT
from standin.harness import StandInProcess, kubectl_env
from tests.binaries import kubectl
from tests.integration.env import (
    REPO_ROOT,
    Agent,
    Api,
    Gateway,
    free_port,
    kubectl_run,
    wait_until,
    write_kubeconfig,
)

pytestmark = pytest.mark.integration

NAMESPACE = "herdgate-system"
ADMIN_TOKEN = "standin-admin-token"
SA_USER = f"system:serviceaccount:{NAMESPACE}:{AGENT_SERVICE_ACCOUNT}"
NODE = "standin-node"
"""The node the stand-in reports (``spec.nodeName`` of a pod scheduled there)."""


@dataclass
class Setup:
    tmp: Path
    standin: StandInProcess
    gateway: Gateway
    admin: Api
    cluster_id: str
    registration: dict[str, Any]
    kube_admin: Path
    """A kubeconfig of the stand-in's own administrator (for kubectl apply)."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("manifest")
    standin = StandInProcess.start(
        tmp / "apiserver",
        tokens={ADMIN_TOKEN: ("kube-admin", "uid-kube-admin", ["system:masters"])},
        args=["--impersonator-users", SA_USER],
    )
    gateway = Gateway(tmp / "gateway", free_port(), tmp / "gateway.log")
    try:
        gateway.start()
        admin = gateway.admin()
        cluster = admin.post("/v3/clusters", {"name": "imported"})
        reg = admin.post("/v3/clusterregistrationtokens", {"clusterId": cluster["id"]})
        kube_admin = standin.kubeconfig(tmp / "kube-admin", token=ADMIN_TOKEN)
        yield Setup(tmp, standin, gateway, admin, cluster["id"], reg, kube_admin)
    finally:
        gateway.stop()
        standin.stop()


def _kubectl(
    setup: Setup, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The real kubectl against the stand-in; it trusts the gateway's CA for ``-f https://``
    (Go reads ``SSL_CERT_FILE`` for its system roots: kubectl has no flag for that)."""
    home = setup.tmp / "home"
    env = kubectl_env(home)
    env["SSL_CERT_FILE"] = str(setup.gateway.ca_file)
    return subprocess.run(
        [kubectl(), "--kubeconfig", str(setup.kube_admin), "--request-timeout=15s", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _fetch(url: str, ca_file: Path) -> tuple[int, str, str]:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=15) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def _documents(setup: Setup) -> list[dict[str, Any]]:
    status, ctype, body = _fetch(setup.registration["manifestUrl"], setup.gateway.ca_file)
    assert status == 200 and ctype == "application/yaml", (status, ctype, body)
    return [d for d in yaml.safe_load_all(body) if d]


def _get(setup: Setup, kind: str, name: str, namespaced: bool) -> dict[str, Any]:
    args = ["get", kind, name, "-o", "json"] + (["-n", NAMESPACE] if namespaced else [])
    out = _kubectl(setup, *args)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command and args (``$$`` escapes)."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def _container_env(
    container: dict[str, Any], secrets: dict[str, dict[str, str]], node: str
) -> dict[str, str]:
    """The container's environment as the kubelet resolves it."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = _expand(item["value"], env)
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
        elif item["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName":
            env[item["name"]] = node
        else:
            raise AssertionError(f"unexpected env source {item}")
    return env


@dataclass
class PodAgent:
    agent: Agent
    health: str
    """``http://127.0.0.1:PORT``: the container's health listener, on loopback."""


def _start_pod_agent(
    setup: Setup,
    workload: dict[str, Any],
    name: str,
    overrides: dict[str, str] | None = None,
) -> PodAgent:
    """Run the workload's container as a pod would: its command and args (``$(VAR)``
    expanded), its environment (the Secret read back from the API server), the service
    account mounted where ``HERDGATE_SERVICE_ACCOUNT_DIR`` says (a pod has it at the
    default path), ``KUBERNETES_SERVICE_HOST``/``_PORT`` as the kubelet sets them. Only
    the health listener's address is moved to loopback (tests talk to 127.0.0.0/8)."""
    pod_spec = workload["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == AGENT_SERVICE_ACCOUNT
    (container,) = pod_spec["containers"]
    secret = _get(setup, "secret", TOKEN_SECRET, namespaced=True)
    secrets = {TOKEN_SECRET: {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}}
    env = _container_env(container, secrets, NODE)
    assert env["HERDGATE_HEALTH_LISTEN"].endswith(":9440")
    port = free_port()
    env["HERDGATE_HEALTH_LISTEN"] = f"127.0.0.1:{port}"
    env.update(overrides or {})
    # The files the kubelet projects into a pod of this service account.
    account = setup.tmp / f"serviceaccount-{name}"
    account.mkdir(exist_ok=True)
    minted = _kubectl(setup, "create", "token", AGENT_SERVICE_ACCOUNT, "-n", NAMESPACE)
    assert minted.returncode == 0, minted.stderr
    (account / "token").write_text(minted.stdout.strip())
    (account / "ca.crt").write_text(setup.standin.ca_file.read_text())
    (account / "namespace").write_text(NAMESPACE)
    host, _, api_port = setup.standin.url.removeprefix("https://").rpartition(":")
    process_env = {k: v for k, v in os.environ.items() if not k.startswith(("HERDGATE_", "KUBE"))}
    process_env.update(env)
    process_env.update(
        KUBERNETES_SERVICE_HOST=host,
        KUBERNETES_SERVICE_PORT=api_port,
        HERDGATE_SERVICE_ACCOUNT_DIR=str(account),
    )
    if os.environ.get("HERDGATE_PURE"):
        process_env["HERDGATE_PURE"] = os.environ["HERDGATE_PURE"]
    assert container["command"] == ["herdgate"]
    args = [_expand(a, env) for a in container.get("args", [])]
    command = [sys.executable, "-m", "herdgate", *args]
    agent = Agent(command, setup.tmp / f"{name}.log")
    log = agent.log_file.open("ab")
    agent.process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=process_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return PodAgent(agent, f"http://127.0.0.1:{port}")


def _http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _metrics(pod: PodAgent) -> dict[str, float]:
    status, text = _http(pod.health + "/metrics")
    assert status == 200, text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def _log(agent: Agent) -> str:
    return agent.log_file.read_text(errors="replace") if agent.log_file.exists() else ""


# -- the tests, in order (one stand-in, one gateway) ---------------------------------------


def test_registration_token_offers_the_manifest(setup: Setup) -> None:
    reg = setup.registration
    url = reg["manifestUrl"]
    assert url == f"{setup.gateway.url}/v3/import/{reg['token']}.yaml"
    lines = reg["command"].splitlines()
    assert lines[0].startswith("herdgate agent --server ") and reg["token"] in lines[0]
    assert lines[1] == f"kubectl apply -f {url}"
    assert reg["insecureCommand"] == f"curl --insecure -sfL {url} | kubectl apply -f -"
    assert reg["nodeCommand"] == lines[0]


def test_server_side_dry_run_then_apply_creates_every_object(setup: Setup) -> None:
    url = setup.registration["manifestUrl"]
    docs = _documents(setup)
    kinds = [d["kind"] for d in docs]
    assert kinds[0] == "Namespace" and {"Deployment", "DaemonSet", "Secret"} <= set(kinds)

    # Before anything exists, the real server's dry run creates nothing: its namespace
    # lifecycle check refuses the namespaced objects (the namespace is not created
    # either), and kubectl says so; every cluster-scoped object passes.
    dry = _kubectl(setup, "apply", "--dry-run=server", "-f", url)
    assert "namespace/herdgate-system created (server dry run)" in dry.stdout, dry
    for doc in docs:
        if "namespace" not in doc["metadata"] and doc["kind"] != "Namespace":
            line = f"{doc['kind'].lower()}.rbac.authorization.k8s.io/{doc['metadata']['name']}"
            assert f"{line} created (server dry run)" in dry.stdout, dry
    assert _kubectl(setup, "get", "namespace", NAMESPACE).returncode != 0

    applied = _kubectl(setup, "apply", "-f", url)
    assert applied.returncode == 0, applied
    for doc in docs:
        meta = doc["metadata"]
        got = _get(setup, doc["kind"], meta["name"], namespaced="namespace" in meta)
        assert got["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "herdgate"
        if doc["kind"] in ("Deployment", "DaemonSet"):
            want = doc["spec"]["template"]["spec"]["containers"][0]
            have = got["spec"]["template"]["spec"]["containers"][0]
            for key in ("image", "command", "args", "env", "securityContext", "resources"):
                assert have[key] == want[key], key

    # Now that everything exists, the server-side dry run passes for every object.
    again = _kubectl(setup, "apply", "--dry-run=server", "-f", url)
    assert again.returncode == 0, again
    assert again.stdout.count("(server dry run)") == len(docs), again.stdout


def test_fetched_and_piped_to_kubectl_apply(setup: Setup) -> None:
    """The ``insecureCommand`` way: the body fetched by the client, piped to ``-f -``."""
    _, _, body = _fetch(setup.registration["manifestUrl"], setup.gateway.ca_file)
    piped = _kubectl(setup, "apply", "-f", "-", stdin=body)
    assert piped.returncode == 0, piped
    assert "unchanged" in piped.stdout


def test_agent_as_the_deployment_runs_it_connects(setup: Setup) -> None:
    docs = {d["kind"]: d for d in _documents(setup)}
    deployment = _get(setup, "deployment", CLUSTER_AGENT, namespaced=True)
    assert deployment["spec"]["replicas"] == 2
    pod = _start_pod_agent(setup, deployment, "cluster-agent")
    try:
        wait_until(
            lambda: _http(pod.health + "/healthz")[0] == 200, 20, f"not live:\n{_log(pod.agent)}"
        )
        wait_until(
            lambda: setup.admin.get(f"/v3/clusters/{setup.cluster_id}")["state"] == "active",
            20,
            f"cluster never active:\n{_log(pod.agent)}",
        )
        wait_until(lambda: _http(pod.health + "/readyz")[0] == 200, 10, "never ready")
        cluster = setup.admin.get(f"/v3/clusters/{setup.cluster_id}")
        assert len(cluster["agents"]) == 1

        # A kubectl call through the gateway goes over this agent's tunnel. The binding
        # is what the access sync makes for a cluster owner (here by hand, narrower), so
        # that the call holds when the stand-in decides by RBAC too.
        (admin_user,) = [
            u for u in setup.admin.get("/v3/users")["data"] if u["username"] == "admin"
        ]
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "test-gateway-admin-view"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "view",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": admin_user["id"],
                }
            ],
        }
        bound = _kubectl(setup, "apply", "-f", "-", stdin=json.dumps(binding))
        assert bound.returncode == 0, bound
        config = setup.admin.post(f"/v3/clusters/{setup.cluster_id}?action=generateKubeconfig")
        kc = write_kubeconfig(setup.tmp / "kubeconfig-admin", config["config"])
        out = kubectl_run(kubectl(), kc, "get", "namespace", NAMESPACE, "-o", "name")
        assert out.returncode == 0 and out.stdout.strip() == f"namespace/{NAMESPACE}", out

        # The API server saw the service account, with its groups, not system:masters.
        events = [
            e
            for e in setup.standin.audit_events()
            if e.get("requestURI", "").startswith(f"/api/v1/namespaces/{NAMESPACE}")
            and e.get("impersonatedUser")
        ]
        assert events, "no impersonated request reached the API server"
        user = events[-1]["user"]
        assert user["username"] == "system:serviceaccount:herdgate-system:herdgate-agent"
        assert "system:masters" not in user.get("groups", [])
        assert "system:serviceaccounts" in user["groups"]

        metrics = _metrics(pod)
        assert metrics["herdgate_agent_tunnels"] == 1
        assert metrics["herdgate_agent_dials_total{outcome=new}"] >= 1
        assert metrics["herdgate_agent_streams_total"] >= 1
        assert metrics["herdgate_agent_bytes_total{direction=to_apiserver}"] > 0
        assert metrics["herdgate_agent_bytes_total{direction=from_apiserver}"] > 0
        assert metrics["herdgate_agent_apiserver_latency_seconds_count"] >= 1
        assert metrics["herdgate_agent_apiserver_latency_seconds_bucket{le=+Inf}"] >= 1
        assert "DaemonSet" in docs
    finally:
        pod.agent.stop()
    wait_until(
        lambda: setup.admin.get(f"/v3/clusters/{setup.cluster_id}")["state"] == "unavailable",
        20,
        "cluster still active after the agent stopped",
    )


def test_not_ready_without_a_tunnel(setup: Setup) -> None:
    """Live but not ready while the gateway refuses its token (no tunnel)."""
    deployment = _get(setup, "deployment", CLUSTER_AGENT, namespaced=True)
    reg_id = setup.registration["id"].split(":")[-1]
    pod = _start_pod_agent(
        setup, deployment, "no-tunnel", {"HERDGATE_TOKEN": f"{reg_id}:not-the-secret"}
    )
    try:
        wait_until(
            lambda: _metrics_or_none(pod, "herdgate_agent_dials_total{outcome=failed}"),
            20,
            f"no failed dial counted:\n{_log(pod.agent)}",
        )
        assert _http(pod.health + "/healthz")[0] == 200
        status, text = _http(pod.health + "/readyz")
        assert status == 503 and "no tunnel" in text
        assert _metrics(pod)["herdgate_agent_tunnels"] == 0
    finally:
        pod.agent.stop()


def _metrics_or_none(pod: PodAgent, key: str) -> float | None:
    status, _ = _http(pod.health + "/healthz")
    if status != 200:
        return None
    return _metrics(pod).get(key) or None


def test_node_agent_as_the_daemonset_runs_it(setup: Setup) -> None:
    daemonset = _get(setup, "daemonset", NODE_AGENT, namespaced=True)
    tolerations = daemonset["spec"]["template"]["spec"]["tolerations"]
    assert {t["key"] for t in tolerations} >= {
        "node-role.kubernetes.io/control-plane",
        "node-role.kubernetes.io/master",
    }
    pod = _start_pod_agent(setup, daemonset, "node-agent")
    try:
        wait_until(
            lambda: any(
                a.get("node") == NODE
                for a in setup.admin.get(f"/v3/clusters/{setup.cluster_id}")["agents"]
            ),
            20,
            f"no node agent for {NODE}:\n{_log(pod.agent)}",
        )
        wait_until(lambda: _http(pod.health + "/readyz")[0] == 200, 10, "never ready")
    finally:
        pod.agent.stop()


def test_readiness_follows_the_tunnel_across_a_gateway_restart(setup: Setup) -> None:
    """Ready while the tunnel is up, not ready while the gateway is away (still live),
    ready again once it reconnects, which ``/metrics`` counts."""
    deployment = _get(setup, "deployment", CLUSTER_AGENT, namespaced=True)
    pod = _start_pod_agent(setup, deployment, "restart")
    try:
        wait_until(lambda: _http(pod.health + "/readyz")[0] == 200, 20, _log(pod.agent))
        assert _metrics(pod)["herdgate_agent_reconnects_total"] == 0
        setup.gateway.stop()
        wait_until(lambda: _http(pod.health + "/readyz")[0] == 503, 20, "still ready")
        assert _http(pod.health + "/healthz")[0] == 200
        assert _metrics(pod)["herdgate_agent_tunnels"] == 0
        setup.gateway.start()
        setup.admin = setup.gateway.admin()
        wait_until(
            lambda: _http(pod.health + "/readyz")[0] == 200,
            40,
            f"never ready again:\n{_log(pod.agent)}",
        )
        metrics = _metrics(pod)
        assert metrics["herdgate_agent_reconnects_total"] == 1
        assert metrics["herdgate_agent_tunnels"] == 1
        # The gateway calls the cluster active once its controller has seen the API
        # server ready through the new tunnel: a probe after the agent's own readiness.
        wait_until(
            lambda: setup.admin.get(f"/v3/clusters/{setup.cluster_id}")["state"] == "active",
            10,
            "the cluster never became active again",
        )
    finally:
        pod.agent.stop()


def test_the_token_is_in_no_log(setup: Setup) -> None:
    """The gateway served the manifest (and refused bad tokens) many times by now; the
    registration token's secret is in none of its log lines, nor in the agents'."""
    secret = setup.registration["token"].split(":")[1]
    bad = f"{setup.registration['token'].split(':')[0]}:{secret[:-3]}xyz"
    status, _, _ = _fetch(f"{setup.gateway.url}/v3/import/{bad}.yaml", setup.gateway.ca_file)
    assert status == 404
    assert "agent manifest served" in setup.gateway.log()
    for log in (setup.gateway.log(), *(p.read_text() for p in setup.tmp.glob("*agent*.log"))):
        assert secret not in log and secret[:-3] not in log


def test_outside_a_pod_without_kubeconfig_is_a_clear_error(setup: Setup, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERDGATE_", "KUBE"))}
    env["HERDGATE_SERVICE_ACCOUNT_DIR"] = str(tmp_path)
    flags = ["--server", setup.gateway.url, "--token", setup.registration["token"]]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "herdgate",
            "agent",
            *flags,
            "--ca-file",
            str(setup.gateway.ca_file),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 1
    assert (
        "not running in a pod (KUBERNETES_SERVICE_HOST is not set) and no --kubeconfig given"
        in out.stderr
    ), out.stderr

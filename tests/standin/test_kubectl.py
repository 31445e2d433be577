"""Real kubectl (several versions) against the stand-in API server."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from config.tls import issue_client_cert, write_cert, write_key
from standin.harness import StandInProcess, kubectl_env

from .conftest import ClientCA, Kubectl, need_kubectl

pytestmark = pytest.mark.integration

VERSIONS = ["1.27", "1.29", "1.32", "1.33"]
MAIN_VERSIONS = ["1.27", "1.32"]


def _tag(version: str) -> str:
    return version.replace(".", "")


@pytest.mark.parametrize("version", VERSIONS)
def test_whoami(kubectl: Kubectl, version: str) -> None:
    out = kubectl(version, "auth", "whoami", "-o", "json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)["status"]["userInfo"]
    assert info == {
        "username": "admin",
        "uid": "uid-admin",
        "groups": ["system:masters", "system:authenticated"],
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_whoami_impersonating(kubectl: Kubectl, version: str) -> None:
    out = kubectl(
        version, "auth", "whoami", "-o", "json", "--as=bob", "--as-group=g1", "--as-uid=u-1"
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)["status"]["userInfo"]
    assert info == {"username": "bob", "uid": "u-1", "groups": ["g1", "system:authenticated"]}


@pytest.mark.parametrize("version", MAIN_VERSIONS)
def test_impersonation_by_listed_user(kubectl: Kubectl, version: str) -> None:
    """carol has no privileged group but RBAC lets her impersonate users."""
    out = kubectl(version, "auth", "whoami", "-o", "json", "--as=dave", user="carol")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"]["userInfo"]["username"] == "dave"


@pytest.mark.parametrize("version", MAIN_VERSIONS)
def test_impersonation_forbidden(kubectl: Kubectl, standin: StandInProcess, version: str) -> None:
    # With a cold discovery cache kubectl only prints "Error from server (Forbidden): unknown"
    # (its discovery client cannot decode errors there, against a real cluster as well).
    assert kubectl(version, "api-resources", user="alice").returncode == 0
    out = kubectl(version, "get", "configmaps", "--as=bob", user="alice")
    assert out.returncode == 1
    assert (
        'Error from server (Forbidden): users "bob" is forbidden: User "alice" cannot '
        'impersonate resource "users" in API group "" at the cluster scope'
    ) in out.stderr
    # whoami hides the 403 behind its own message, exactly as against a real cluster
    out = kubectl(version, "auth", "whoami", "--as=bob", user="alice")
    assert out.returncode == 1
    assert "selfsubjectreviews API is not enabled" in out.stderr
    denied = [
        e
        for e in standin.audit_events()
        if e["user"].get("username") == "alice" and e["responseStatus"]["code"] == 403
    ]
    assert denied
    assert "impersonatedUser" not in denied[-1]


@pytest.mark.parametrize("version", MAIN_VERSIONS)
def test_configmap_lifecycle_and_errors(kubectl: Kubectl, version: str) -> None:
    name = f"cm-{_tag(version)}"
    out = kubectl(version, "create", "configmap", name, "--from-literal=greeting=hello")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"configmap/{name} created"

    out = kubectl(version, "create", "configmap", name, "--from-literal=greeting=hello")
    assert out.returncode == 1
    assert f'configmaps "{name}" already exists' in out.stderr

    out = kubectl(version, "get", "configmap", name, "-o", "json")
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert obj["kind"] == "ConfigMap"
    assert obj["data"] == {"greeting": "hello"}
    assert obj["metadata"]["uid"] and obj["metadata"]["resourceVersion"]

    out = kubectl(version, "get", "configmaps")
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split() == ["NAME", "DATA", "AGE"]
    assert any(r.split()[:2] == [name, "1"] for r in rows)

    out = kubectl(version, "delete", "configmap", name)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f'configmap "{name}" deleted'

    out = kubectl(version, "get", "configmap", name)
    assert out.returncode == 1
    assert out.stderr.strip() == f'Error from server (NotFound): configmaps "{name}" not found'


POD = """
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: web}}
  annotations:
    standin.herdgate.dev/log: "first\\nsecond"
spec:
  containers:
  - name: main
    image: nginx:1.25
"""


@pytest.mark.parametrize("version", MAIN_VERSIONS)
def test_pod_from_yaml(kubectl: Kubectl, version: str) -> None:
    name = f"web-{_tag(version)}"
    out = kubectl(version, "create", "-f", "-", stdin=POD.format(name=name))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"pod/{name} created"

    out = kubectl(version, "get", "pods")
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    row = next(r.split() for r in rows if r.split()[0] == name)
    assert row[1:4] == ["1/1", "Running", "0"]

    out = kubectl(version, "logs", name)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "first\nsecond\n"

    out = kubectl(version, "describe", "pod", name)
    assert out.returncode == 0, out.stderr
    assert "Status:           Running" in out.stdout

    out = kubectl(version, "delete", "pod", name)
    assert out.returncode == 0, out.stderr


@contextlib.contextmanager
def _streaming(proc: subprocess.Popen[str]) -> Iterator[queue.Queue[str]]:
    """Lines of a running process's stdout; the process is killed on exit."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        yield lines
    finally:
        proc.kill()
        proc.wait(5)
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()


def _wait_for(lines: queue.Queue[str], predicate: object, timeout: float) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if callable(predicate) and predicate(line):
            return seen
    raise AssertionError(f"not seen within {timeout}s; got {seen!r}")


def _popen_kubectl(version: str, kubeconfig: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [need_kubectl(version), "--kubeconfig", str(kubeconfig), *args],
        env=kubectl_env(kubeconfig.parent / f"home-kubectl.{version}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.parametrize("version", MAIN_VERSIONS)
def test_get_watch_sees_later_create(
    kubectl: Kubectl, kubeconfigs: dict[str, Path], version: str
) -> None:
    name = f"watched-{_tag(version)}"
    kubectl(version, "create", "namespace", f"w-{_tag(version)}")
    proc = _popen_kubectl(
        version,
        kubeconfigs["admin"],
        "get",
        "configmaps",
        "-n",
        f"w-{_tag(version)}",
        "--watch",
        "--output-watch-events",
    )
    with _streaming(proc) as lines:
        time.sleep(0.5)  # let the list+watch start
        out = kubectl(version, "create", "configmap", name, "-n", f"w-{_tag(version)}")
        assert out.returncode == 0, out.stderr
        seen = _wait_for(lines, lambda line: name in line, timeout=10)
        assert seen[0].split() == ["EVENT", "NAME", "DATA", "AGE"]
        assert seen[-1].split()[:3] == ["ADDED", name, "0"]
        kubectl(version, "delete", "configmap", name, "-n", f"w-{_tag(version)}")
        seen = _wait_for(lines, lambda line: line.startswith("DELETED"), timeout=10)
        assert seen[-1].split()[1] == name


@pytest.mark.parametrize("version", MAIN_VERSIONS)
def test_logs_follow_streams(kubectl: Kubectl, kubeconfigs: dict[str, Path], version: str) -> None:
    name = f"logger-{_tag(version)}"
    out = kubectl(version, "run", name, "--image=busybox")
    assert out.returncode == 0, out.stderr
    proc = _popen_kubectl(version, kubeconfigs["admin"], "logs", "-f", name)
    with _streaming(proc) as lines:
        started = time.monotonic()
        seen = _wait_for(lines, lambda line: line == "line 8", timeout=10)
        assert seen == [f"line {i}" for i in range(1, 9)]
        # lines 6..8 are produced while following, 0.2 s apart
        assert time.monotonic() - started >= 0.5
    kubectl(version, "delete", "pod", name, "--wait=false")


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets{tag}.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {{plural: gadgets{tag}, singular: gadget{tag}, kind: Gadget{tag}, shortNames: [gd{tag}]}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
    additionalPrinterColumns:
    - {{name: Size, type: string, jsonPath: .spec.size}}
"""

CR = """
apiVersion: example.com/v1
kind: Gadget{tag}
metadata: {{name: g1}}
spec: {{size: large}}
"""


@pytest.mark.parametrize("version", MAIN_VERSIONS)
def test_crd_then_custom_resource(kubectl: Kubectl, version: str) -> None:
    tag = _tag(version)
    out = kubectl(version, "apply", "-f", "-", stdin=CRD.format(tag=tag))
    assert out.returncode == 0, out.stderr
    out = kubectl(version, "apply", "-f", "-", stdin=CR.format(tag=tag))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"gadget{tag}.example.com/g1 created"

    out = kubectl(version, "get", f"gd{tag}")
    assert out.returncode == 0, out.stderr
    assert [line.split()[:2] for line in out.stdout.splitlines()] == [
        ["NAME", "SIZE"],
        ["g1", "large"],
    ]
    out = kubectl(version, "get", f"gadgets{tag}", "g1", "-o", "yaml")
    obj = yaml.safe_load(out.stdout)
    assert obj["apiVersion"] == "example.com/v1"
    assert obj["spec"] == {"size": "large"}

    out = kubectl(version, "delete", "-f", "-", stdin=CRD.format(tag=tag))
    assert out.returncode == 0, out.stderr
    out = kubectl(version, "get", f"gadgets{tag}.example.com")
    assert out.returncode == 1
    assert "the server doesn't have a resource type" in out.stderr


@pytest.mark.parametrize("version", MAIN_VERSIONS)
def test_apply_create_then_configure(kubectl: Kubectl, version: str) -> None:
    name = f"applied-{_tag(version)}"
    doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "1"}}
    out = kubectl(version, "apply", "-f", "-", stdin=json.dumps(doc))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"configmap/{name} created"
    doc["data"] = {"k": "2"}
    out = kubectl(version, "apply", "-f", "-", stdin=json.dumps(doc))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"configmap/{name} configured"
    out = kubectl(version, "get", "cm", name, "-o", "jsonpath={.data.k}")
    assert out.stdout == "2"


@pytest.mark.parametrize("version", MAIN_VERSIONS)
def test_can_i(kubectl: Kubectl, version: str) -> None:
    out = kubectl(version, "auth", "can-i", "delete", "nodes", user="alice")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "yes"


def test_protobuf_requests_are_audited(kubectl: Kubectl, standin: StandInProcess) -> None:
    """kubectl 1.32 sends typed-client bodies as protobuf; the audit log records it."""
    out = kubectl("1.32", "create", "configmap", "pb-cm", "--from-literal=a=b", "--as=bob")
    assert out.returncode == 0, out.stderr
    create = next(
        e
        for e in reversed(standin.audit_events())
        if e["verb"] == "create" and e.get("objectRef", {}).get("resource") == "configmaps"
    )
    assert create["requestContentType"] == "application/vnd.kubernetes.protobuf"
    assert create["user"]["username"] == "admin"
    assert create["impersonatedUser"] == {"username": "bob", "groups": ["system:authenticated"]}
    assert create["responseStatus"]["code"] == 201
    assert create["userAgent"].startswith("kubectl")
    out = kubectl("1.32", "get", "configmap", "pb-cm", "-o", "jsonpath={.data.a}")
    assert out.stdout == "b"


def test_anonymous_and_bad_tokens(standin: StandInProcess, tmp_path: Path) -> None:
    bad = standin.kubeconfig(tmp_path / "bad", token="nope")
    out = subprocess.run(
        [need_kubectl("1.32"), "--kubeconfig", str(bad), "get", "pods"],
        env=kubectl_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 1
    # (the discovery request fails first; kubectl words the 401 from there like this)
    assert (
        "error: You must be logged in to the server "
        "(the server has asked for the client to provide credentials)"
    ) in out.stderr


def test_client_certificate(standin: StandInProcess, client_ca: ClientCA, tmp_path: Path) -> None:
    cert, key = issue_client_cert(*client_ca, "erin", ("ops", "system:masters"))
    write_cert(tmp_path / "erin.crt", cert)
    write_key(tmp_path / "erin.key", key)
    kubeconfig = standin.kubeconfig(
        tmp_path / "kubeconfig", client_cert=(tmp_path / "erin.crt", tmp_path / "erin.key")
    )
    out = subprocess.run(
        [need_kubectl("1.32"), "--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "json"],
        env=kubectl_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"]["userInfo"] == {
        "username": "erin",
        "groups": ["ops", "system:masters", "system:authenticated"],
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_cp_runs_the_pods_tar(kubectl: Kubectl, version: str, tmp_path: Path) -> None:
    """``kubectl cp`` both ways against the stand-in: the pod's real tar, its exit status."""
    pod = f"cp-{_tag(version)}"
    assert kubectl(version, "run", pod, "--image=busybox", "--restart=Never").returncode == 0
    local = tmp_path / "file.txt"
    local.write_text("".join(f"line {i}\n" for i in range(20_000)))
    up = kubectl(version, "cp", str(local), f"{pod}:/tmp/file.txt")
    assert up.returncode == 0, up.stderr
    back = tmp_path / "back.txt"
    down = kubectl(version, "cp", f"{pod}:/tmp/file.txt", str(back))
    assert down.returncode == 0, down.stderr
    assert back.read_text() == local.read_text()
    # tar's own failure, through the exec status channel
    failed = kubectl(version, "exec", pod, "--", "tar", "cf", "-", "/nothere")
    assert failed.returncode == 2
    assert "tar: /nothere: Cannot stat: No such file or directory" in failed.stderr
    assert "command terminated with exit code 2" in failed.stderr
    # each pod its own files
    other = f"cp-other-{_tag(version)}"
    assert kubectl(version, "run", other, "--image=busybox", "--restart=Never").returncode == 0
    assert kubectl(version, "exec", other, "--", "test", "-e", "/tmp/file.txt").returncode == 1

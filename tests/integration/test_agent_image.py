"""The agent's container image (scripts/build-agent-image), run against a world.

The image is built (or reused: the build returns at once when its inputs did not change,
and waits for a build scripts/test-all started in the background) and run three ways:

- by a container runtime: rootful podman with runc (``--network host``, so the agent
  reaches the gateway on 127.0.0.1; ``--read-only``; the image's own user), with a
  kubeconfig and the registration token as files mounted read-only. crun, which podman
  prefers, refuses hosts whose cgroup v2 hierarchy beside v1 holds a controller
  ("cgroups in hybrid mode not supported"); runc runs there.
- the same as in a pod: the service account's files at their path, the API server in
  ``KUBERNETES_SERVICE_*``, the token in ``HERDGATE_TOKEN``, no writable directory.
- without a runtime: the image's layers unpacked and run in new mount and PID
  namespaces, chrooted, read-only, as the image's user (what a machine where no runtime
  can start a container still checks).

Each time the image's agent is a second agent of the world's cluster; the world's own
agent is then stopped, the cluster stays active, and kubectl through the gateway
reaches the stand-in API server through the image's agent.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.binaries import kubectl
from tests.integration.conftest import AGENT_SA_TOKEN, World, start_world, stop_world
from tests.integration.env import REPO_ROOT, kubectl_run, wait_until

# A cold build (Debian's packages downloaded, perhaps the mypyc compile) or waiting for
# the one scripts/test-all started takes longer than the suite's default timeout.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

UID = 10001
"""The image's user (scripts/agent_image.py)."""
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
"""Rootful podman with runc (crun refuses this machine's hybrid cgroups)."""
BUILD_TIMEOUT_S = 1200.0
"""For a cold build, or for the one running already (docs/design.md section 10 has
the measurements)."""


@dataclass(frozen=True)
class Image:
    name: str
    layout: Path
    archive: Path
    manifest: str
    config: str
    """The config's digest: podman's image id."""


@pytest.fixture(scope="module")
def image() -> Image:
    """The image as scripts/build-agent-image makes it (from its caches when it can)."""
    if os.geteuid() != 0:
        raise AssertionError("building the image needs root (debootstrap, chroot)")
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "build-agent-image")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "HERDGATE_PURE"},
    )
    assert result.returncode == 0, f"image build failed:\n{result.stderr[-4000:]}"
    built = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"image {built['name']}: {built['seconds']} s (reused: {built['reused']})")
    layout = Path(built["layout"])
    manifest = json.loads((layout / "blobs/sha256" / built["manifest"].split(":")[1]).read_text())
    return Image(
        built["name"], layout, Path(built["archive"]), built["manifest"],
        manifest["config"]["digest"],
    )  # fmt: skip


def test_image_config(image: Image) -> None:
    """Numeric non-root user, exec-form entrypoint, OCI labels; no shell inside."""
    index = json.loads((image.layout / "index.json").read_text())
    blobs = image.layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_text())
    assert config["config"]["User"] == f"{UID}:{UID}"
    assert config["config"]["Entrypoint"] == ["herdgate", "agent"]
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == image.name.rsplit(":", 1)[1]
    assert labels["org.opencontainers.image.revision"]
    assert len(manifest["layers"]) == len(config["rootfs"]["diff_ids"]) == 3
    names: set[str] = set()
    for layer in manifest["layers"]:
        with tarfile.open(blobs / layer["digest"].split(":")[1]) as tar:
            names.update(tar.getnames())
    assert "usr/local/bin/herdgate" in names
    assert "usr/bin/python3.11" in names
    for shell in ("usr/bin/sh", "usr/bin/bash", "usr/bin/dash", "bin/sh"):
        assert shell not in names, shell


# -- running the image --------------------------------------------------------------


def load_once(image: Image) -> None:
    """``podman load`` the archive unless podman holds this very image (its id is the
    digest of the image's config)."""
    held = subprocess.run(
        [*PODMAN, "image", "inspect", "--format", "{{.Id}}", f"localhost/{image.name}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if held.returncode == 0 and f"sha256:{held.stdout.strip()}" == image.config:
        return
    load = subprocess.run(
        [*PODMAN, "load", "-q", "-i", str(image.archive)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert load.returncode == 0, load.stderr


def container_kubeconfig(source: Path, target: Path) -> Path:
    """The agent's kubeconfig with its CA inline (the container sees no host paths)."""
    config = yaml.safe_load(source.read_text())
    for cluster in config["clusters"]:
        ca_path = cluster["cluster"].pop("certificate-authority")
        data = base64.b64encode(Path(ca_path).read_bytes()).decode()
        cluster["cluster"]["certificate-authority-data"] = data
    target.write_text(yaml.safe_dump(config))
    return target


def secret_files(world: World, directory: Path) -> tuple[Path, list[str]]:
    """A directory mounted read-only at /etc/herdgate (kubeconfig, registration token)
    readable only by the image's user, and the agent's arguments."""
    directory.mkdir()
    reg = world.admin.post("/v3/clusterregistrationtokens", {"clusterId": world.cluster_id})
    parts = shlex.split(str(reg["nodeCommand"]))  # the plain `herdgate agent ...` line
    assert parts[:2] == ["herdgate", "agent"], parts
    at = parts.index("--token")
    token = parts[at + 1]
    args = parts[2:at] + parts[at + 2 :]  # the image's entrypoint is `herdgate agent`
    (directory / "registration-token").write_text(token + "\n")
    container_kubeconfig(world.agent_kubeconfig, directory / "kubeconfig")
    for path in (directory, *directory.iterdir()):
        os.chown(path, UID, UID)
        path.chmod(0o500 if path.is_dir() else 0o400)
    args += [
        "--token-file", "/etc/herdgate/registration-token",
        "--kubeconfig", "/etc/herdgate/kubeconfig",
    ]  # fmt: skip
    return directory, args


@dataclass
class Running:
    pid: int
    """The agent's process, as the host sees it."""
    logs: Path
    name: str = ""
    """The podman container's."""


def limits() -> list[str]:
    """Limits podman may set here: at most the current ones (raising them needs
    CAP_SYS_RESOURCE, which this machine's root lacks)."""
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 4096)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[0], 1024)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


@contextlib.contextmanager
def run_podman(
    image: Image, mounts: list[str], args: list[str], tmp: Path, extra: tuple[str, ...] = ()
) -> Iterator[Running]:
    """``mounts``: podman's ``-v`` values; ``extra``: more ``podman run`` options."""
    assert shutil.which("podman"), "podman is not installed (scripts/test-all installs it)"
    assert shutil.which("runc"), "runc is not installed (scripts/test-all installs it)"
    load_once(image)
    name = f"herdgate-agent-test-{os.getpid()}"
    subprocess.run([*PODMAN, "rm", "-f", name], capture_output=True, check=False, timeout=60)
    started = subprocess.run(
        [*PODMAN, "run", "-d", "--name", name, "--network", "host", "--read-only",
         *limits(), *(f"--volume={m}" for m in mounts), *extra,
         f"localhost/{image.name}", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert started.returncode == 0, f"podman run: {started.stderr}"
    logs = tmp / "container.log"
    try:
        pid = int(
            subprocess.run(
                [*PODMAN, "inspect", "--format", "{{.State.Pid}}", name],
                capture_output=True, text=True, timeout=60, check=True,
            ).stdout.strip()
        )  # fmt: skip
        yield Running(pid, logs, name)
    finally:
        out = subprocess.run(
            [*PODMAN, "logs", name], capture_output=True, text=True, timeout=60, check=False
        )
        logs.write_text(out.stdout + out.stderr)
        subprocess.run([*PODMAN, "rm", "-f", "-t", "10", name], capture_output=True,
                       timeout=60, check=False)  # fmt: skip


def unpack(image: Image, rootfs: Path) -> None:
    """The image's layers, in order, into ``rootfs`` (they have no whiteouts)."""
    index = json.loads((image.layout / "index.json").read_text())
    blobs = image.layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    rootfs.mkdir()
    for layer in manifest["layers"]:  # GNU tar: several times faster than tarfile here
        blob = blobs / layer["digest"].split(":")[1]
        subprocess.run(
            ["tar", "-xzf", str(blob), "-C", str(rootfs), "--numeric-owner"],
            check=True, timeout=120,
        )  # fmt: skip


# In the new namespaces: the root read-only (a read-only bind of itself), /proc of the
# new PID namespace, a tmpfs on /tmp as podman --read-only mounts one (kubernetes_asyncio
# writes a kubeconfig's inline CA to a temporary file), the secrets read-only under a
# tmpfs on /run (the read-only root has no /etc/herdgate and cannot get one), then the
# agent as the image's user. Arguments: rootfs, secrets directory, uid, agent arguments.
NAMESPACE_SCRIPT = """
set -eu
root=$1 secrets=$2 uid=$3; shift 3
mount --make-rprivate /
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount -t tmpfs -o size=1m,mode=755 tmpfs "$root/run"
mount -t tmpfs -o size=4m,mode=1777 tmpfs "$root/tmp"
mkdir "$root/run/herdgate"
mount --bind -o ro "$secrets" "$root/run/herdgate"
mount -o remount,bind,ro "$root"
exec chroot --userspec="$uid:$uid" "$root" /usr/local/bin/herdgate agent "$@"
"""


@contextlib.contextmanager
def run_namespaced(image: Image, secrets: Path, args: list[str], tmp: Path) -> Iterator[Running]:
    rootfs = tmp / "rootfs"
    unpack(image, rootfs)
    args = [a.replace("/etc/herdgate/", "/run/herdgate/") for a in args]
    logs = tmp / "namespaced.log"
    with logs.open("wb") as out:
        process = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--",
             "sh", "-c", NAMESPACE_SCRIPT, "sh", str(rootfs), str(secrets), str(UID), *args],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )  # fmt: skip
    try:
        # the agent: unshare's child's child, once chroot has exec'd it (chroot has
        # changed its root before it changes its user and execs: not that moment)
        def agent_pid() -> int | None:
            for pid in _descendants(process.pid):
                try:
                    rooted = Path(f"/proc/{pid}/root").resolve() == rootfs.resolve()
                    execd = Path(f"/proc/{pid}/comm").read_text().strip() != "chroot"
                    if rooted and execd:
                        return pid
                except OSError:
                    continue
            assert process.poll() is None, logs.read_text()
            return None

        pid = wait_until(agent_pid, 30, f"no agent:\n{logs.read_text()}")
        yield Running(pid, logs)
    finally:
        # The agent stops on SIGTERM, sent to it: unshare does not pass signals on, and
        # its --kill-child does not reach a child that changed its user (chroot
        # --userspec clears the parent-death signal). Then unshare exits.
        targets = _descendants(process.pid)
        _signal(targets, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            _signal(targets, signal.SIGKILL)
            process.kill()
            process.wait(5)


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 100:
        current = todo.pop()
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            found += [int(c) for c in children]
            todo += [int(c) for c in children]
    return found


def _status(pid: int, field: str) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split()[1:]
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _root_mount_options(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    raise AssertionError(f"no root mount in /proc/{pid}/mountinfo")


def _agents(world: World) -> int:
    """Tunnels the gateway holds for the world's cluster."""
    agents = world.cluster().get("agents") or []
    assert isinstance(agents, list), agents
    return len(agents)


def in_cluster_files(world: World, directory: Path) -> Path:
    """A service account's files as a pod has them (token, ca.crt, namespace)."""
    directory.mkdir()
    (directory / "token").write_text(AGENT_SA_TOKEN)
    shutil.copy(world.standin.ca_file, directory / "ca.crt")
    (directory / "namespace").write_text("herdgate-system")
    for path in (directory, *directory.iterdir()):
        os.chown(path, UID, UID)
        path.chmod(0o500 if path.is_dir() else 0o400)
    return directory


RUNNERS = ["podman", "podman-in-cluster", "namespaces"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_agent_image_holds_the_tunnel(
    image: Image, runner: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """podman: a kubeconfig and the token as files under /etc/herdgate. podman-in-cluster:
    as in a pod, the service account's files at their path, the API server in
    KUBERNETES_SERVICE_*, the token in HERDGATE_TOKEN, and no writable directory at all
    (no tmpfs on /tmp). namespaces: the first case without a container runtime."""
    tmp = tmp_path_factory.mktemp(f"image-{runner}")
    world = start_world(tmp / "world")
    try:
        before = _agents(world)
        secrets, args = secret_files(world, tmp / "secrets")
        running_image: contextlib.AbstractContextManager[Running]
        if runner == "podman":
            running_image = run_podman(image, [f"{secrets}:/etc/herdgate:ro"], args, tmp)
        elif runner == "podman-in-cluster":
            account = in_cluster_files(world, tmp / "serviceaccount")
            api = urlsplit(world.standin.url)
            token = (secrets / "registration-token").read_text().strip()
            at = args.index("--token-file")
            args = args[:at]  # the registration command's --server and --ca-checksum
            running_image = run_podman(
                image,
                [f"{account}:/var/run/secrets/kubernetes.io/serviceaccount:ro"],
                args,
                tmp,
                (
                    "--read-only-tmpfs=false",
                    f"--env=KUBERNETES_SERVICE_HOST={api.hostname}",
                    f"--env=KUBERNETES_SERVICE_PORT={api.port}",
                    f"--env=HERDGATE_TOKEN={token}",
                ),
            )
        else:
            running_image = run_namespaced(image, secrets, args, tmp)
        with running_image as running:
            # the image's agent runs as its numeric user, on a read-only root
            assert _status(running.pid, "Uid")[:2] == [str(UID), str(UID)]
            assert _status(running.pid, "Gid")[:2] == [str(UID), str(UID)]
            assert "ro" in _root_mount_options(running.pid)
            try:
                wait_until(lambda: _agents(world) > before, 30, "no second agent")
            except TimeoutError:
                raise AssertionError(
                    f"the image's agent never connected: {world.cluster()}\n{_logs(running)}"
                ) from None
            world.agent.stop()  # only the image's agent is left
            wait_until(lambda: _agents(world) == before, 30, f"{world.cluster()}")
            world.wait_state("active")
            kc = world.kubeconfig_for(world.admin, "admin")
            result = kubectl_run(kubectl(), kc, "get", "namespaces", "-o", "name")
            assert result.returncode == 0, f"{result.stderr}\n{_logs(running)}"
            assert "namespace/default" in result.stdout.split()
            assert world.cluster()["state"] == "active"
            # the image's Python runs the compiled tunnel code
            wait_until(lambda: "tunnel code" in _logs(running), 10, _logs(running))
            assert "compiled (mypyc" in _logs(running), _logs(running)
    finally:
        stop_world(world)


def _logs(running: Running) -> str:
    if running.logs.exists():
        return running.logs.read_text(errors="replace")
    # podman: the log file is written when the container is removed; ask podman now
    out = subprocess.run(
        [*PODMAN, "logs", running.name], capture_output=True, text=True, timeout=60, check=False
    )
    return out.stdout + out.stderr


if __name__ == "__main__":  # pragma: no cover - for a manual look
    sys.exit(pytest.main([__file__, "-q"]))

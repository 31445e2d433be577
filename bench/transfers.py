"""Large transfers with the real kubectl: ``kubectl cp`` both ways and ``kubectl port-forward``.

Both against the full stand-in API server (``standin``, whose pods run the real ``tar``, see
``standin/pods.py``), once directly and once through herdgate (gateway, tunnel, agent), with
the same kubectl (the one on PATH, 1.32: WebSocket exec and WebSocket port-forward), in
interleaved rounds:

- ``kubectl cp`` of a random file of ``--mb`` MB into the pod (``tar -xmf -``) and back out
  (``tar cf -``); the copy that comes back is compared with the original (sha256).
- ``kubectl port-forward`` to a pod port (the stand-in's pods echo what is not HTTP):
  ``--mb`` MB of a known pattern sent through the forwarded port while the echo is read
  back and checked byte for byte; the figure is MB sent (and received) per second.

MB is 10^6 bytes. Every kubectl run and the whole phase are bounded in time.

Run alone: ``python -m bench --only transfers`` (a 1,000 MB file: ~3 GB of disk in the temp
directory at most).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import resource
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.herdgate import AGENT_BACKEND_TOKEN
from bench.nginx import Certs
from bench.procstats import CpuMeter, CpuUsage
from bench.profile import Profile, collect, py_spy, start_spies
from standin.harness import StandInProcess, kubectl_env
from tests.binaries import find_kubectl
from tests.integration.env import free_port

POD = "bench-transfers"
POD_PORT = 9000
CHUNK = 256 * 1024
PATTERN = bytes(range(256)) * (CHUNK // 256)
"""What port-forward sends: period 256, so any received slice can be checked by its offset."""
KUBECTL_TIMEOUT = 600.0


@dataclass
class TransfersResult:
    mb: float
    kubectl: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    """One per round and path: ``{"round", "path", "cp_up_mb_per_s", "cp_down_mb_per_s",
    "intact", "pf_mb_per_s", "cpu"}``; ``cpu``: per figure (``cp_up``, ``cp_down``, ``pf``),
    % of one core (see ``_measured``)."""

    profile: dict[str, Profile] = field(default_factory=dict)
    """py-spy of the gateway and the agent during the first herdgate port-forward."""

    def values(self, path: str, key: str) -> list[float]:
        return [float(r[key]) for r in self.runs if r["path"] == path]


def _kubeconfig(path: Path, server: str, ca_file: Path, token: str) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_file.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


def _kubectl(kubectl: str, kc: Path, home: Path, *args: str) -> str:
    done = subprocess.run(
        [kubectl, "--kubeconfig", str(kc), *args],
        env=kubectl_env(home), capture_output=True, text=True, timeout=KUBECTL_TIMEOUT,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: rc={done.returncode}\n{done.stderr}")
    return done.stdout


def _random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left > 0:
            block = os.urandom(min(left, 4 << 20))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


def _rusage_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def _measured(roles: dict[str, int], into: dict[str, float]) -> Iterator[None]:
    """CPU over the block, % of one core: the roles' process trees, kubectl (the children
    this process waited for), the client (this process), ``other`` (the box's remaining
    busy time: tar in the pod, the kernel's writeback, other people's work) and ``box``."""
    children, own = _rusage_s(resource.RUSAGE_CHILDREN), _rusage_s(resource.RUSAGE_SELF)
    with CpuMeter(roles) as meter:
        yield
    usage: CpuUsage | None = meter.usage
    assert usage is not None and usage.wall_s > 0
    into.update({role: usage.pct(role) for role in usage.roles})
    into["kubectl"] = 100.0 * (_rusage_s(resource.RUSAGE_CHILDREN) - children) / usage.wall_s
    into["client"] = 100.0 * (_rusage_s(resource.RUSAGE_SELF) - own) / usage.wall_s
    into["other"] = max(0.0, usage.box_busy_pct - sum(into.values()))
    into["box"] = usage.box_busy_pct


def _wait_line(stream: Any, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen = ""
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([stream], [], [], left)[0]:
            raise TimeoutError(f"no {needle!r} from kubectl: {seen!r}")
        line = stream.readline()
        if not line:
            raise RuntimeError(f"kubectl ended: {seen!r}")
        seen += line


def port_forward(kubectl: str, kc: Path, home: Path, size: int, timeout: float) -> float:
    """``size`` bytes through ``kubectl port-forward`` and echoed back: MB/s (each way)."""
    port = free_port()
    proc = subprocess.Popen(
        [kubectl, "--kubeconfig", str(kc), "port-forward", f"pod/{POD}", f"{port}:{POD_PORT}"],
        env=kubectl_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        _wait_line(proc.stdout, "Forwarding from", 30)
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            failure: list[BaseException] = []

            def send() -> None:
                try:
                    left = size
                    while left > 0:
                        sock.sendall(PATTERN[: min(left, CHUNK)])
                        left -= CHUNK
                    sock.shutdown(socket.SHUT_WR)
                except OSError as exc:
                    failure.append(exc)

            twice = PATTERN + PATTERN
            buffer = bytearray(CHUNK)
            view = memoryview(buffer)
            started = time.perf_counter()
            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            received = 0
            while received < size:
                count = sock.recv_into(buffer)
                if count == 0:
                    break
                offset = received % 256
                if view[:count] != twice[offset : offset + count]:
                    raise RuntimeError(f"port-forward: wrong bytes at offset {received}")
                received += count
            seconds = time.perf_counter() - started
            sender.join(timeout)
            if failure:
                raise RuntimeError(f"port-forward: sending failed: {failure[0]!r}")
            if received != size:
                raise RuntimeError(f"port-forward: {received} of {size} bytes came back")
        return size / 1e6 / seconds
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def _profiled(
    pids: dict[str, int], seconds: float, out_dir: Path, into: dict[str, Profile]
) -> Iterator[None]:
    """py-spy every pid for ``seconds`` from the start of the block (if ``seconds``)."""
    binary = py_spy() if seconds > 0 else None
    if binary is None:
        yield
        return
    spies = start_spies(binary, pids, seconds, "transfers", out_dir)
    try:
        yield
    finally:
        into.update(collect(spies, seconds))


def run(
    tmp: Path,
    certs: Certs,
    rounds: int,
    mb: float,
    log: Any,
    start_herd: Any,
    profile_s: float = 0.0,
    kubectl_version: str | None = None,
) -> TransfersResult:
    """The phase: a stand-in, a herd (``suite.start_herd``) in front of it, then rounds;
    ``profile_s``: py-spy the gateway and the agent for that long during the first
    port-forward through herdgate; ``kubectl_version``: ``kubectl.<version>`` beside the
    kubectl on PATH instead of it (e.g. "1.27": SPDY exec and port-forward)."""
    kubectl = find_kubectl(kubectl_version)
    if kubectl is None:
        raise RuntimeError(f"kubectl {kubectl_version or ''} not found")
    version = subprocess.run(
        [kubectl, "version", "--client", "-o", "yaml"], capture_output=True, text=True, check=True
    ).stdout
    result = TransfersResult(mb, str(yaml.safe_load(version)["clientVersion"]["gitVersion"]))
    size = int(mb * 1e6)
    with contextlib.ExitStack() as stack:
        standin = StandInProcess.start(
            tmp / "standin-transfers",
            tokens={AGENT_BACKEND_TOKEN: ("bench-agent", "uid-agent", ["system:masters"])},
            args=["--tls-cert-file", str(certs.cert), "--tls-private-key-file", str(certs.key),
                  "--pod-root", str(tmp / "pods")],
            authorization_mode="AlwaysAllow",
        )  # fmt: skip
        stack.callback(standin.stop)
        herd = start_herd(stack, tmp, certs, standin.url, "transfers")
        gateway = herd.gateway
        paths = [
            ("direct", _kubeconfig(tmp / "direct.kubeconfig", standin.url, certs.ca,
                                   AGENT_BACKEND_TOKEN)),
            ("herdgate", _kubeconfig(tmp / "herdgate.kubeconfig",
                                     f"{gateway.url}/k8s/clusters/{herd.cluster_id}",
                                     gateway.ca_file, herd.token)),
        ]  # fmt: skip
        assert herd.gateway.process is not None and herd.agent.process is not None
        roles = {
            "stand-in": standin.process.pid,
            "gateway": herd.gateway.process.pid,
            "agent": herd.agent.process.pid,
        }
        home = tmp / "kubectl-home"
        _kubectl(kubectl, paths[0][1], home, "run", POD, "--image=busybox", "--restart=Never")
        local, back = tmp / "transfer.bin", tmp / "transfer-back.bin"
        log(f"  writing a {mb:g} MB random file")
        digest = _random_file(local, size)
        for number in range(rounds):
            order = paths[number % 2 :] + paths[: number % 2]
            for name, kc in order:
                cpu: dict[str, dict[str, float]] = {"cp_up": {}, "cp_down": {}, "pf": {}}
                with _measured(roles, cpu["cp_up"]):
                    started = time.perf_counter()
                    _kubectl(kubectl, kc, home, "cp", str(local), f"{POD}:/tmp/transfer.bin")
                    up = size / 1e6 / (time.perf_counter() - started)
                with _measured(roles, cpu["cp_down"]):
                    started = time.perf_counter()
                    _kubectl(kubectl, kc, home, "cp", f"{POD}:/tmp/transfer.bin", str(back))
                    down = size / 1e6 / (time.perf_counter() - started)
                got = _sha256(back)
                back.unlink()
                for copy in (tmp / "pods").glob("*/tmp/transfer.bin"):
                    copy.unlink()
                spied = {k: v for k, v in roles.items() if k != "stand-in"}
                spy_s = profile_s if name == "herdgate" and not result.profile else 0.0
                with (
                    _profiled(spied, spy_s, tmp, result.profile),
                    _measured(roles, cpu["pf"]),
                ):
                    pf = port_forward(kubectl, kc, home, size, KUBECTL_TIMEOUT)
                result.runs.append(
                    {
                        "round": number + 1,
                        "path": name,
                        "cp_up_mb_per_s": up,
                        "cp_down_mb_per_s": down,
                        "intact": got == digest,
                        "pf_mb_per_s": pf,
                        "cpu": cpu,
                    }
                )
                log(
                    f"  transfers round {number + 1}/{rounds} {name:<9} cp up {up:.0f} MB/s,"
                    f" down {down:.0f} MB/s ({'intact' if got == digest else 'CORRUPT'}),"
                    f" port-forward {pf:.0f} MB/s"
                )
        local.unlink()
    return result

"""Helpers for tests that run the stand-in as a subprocess and drive real kubectl against it.

server = StandInProcess.start(tmp_path / "apiserver", tokens={"admin-token": ("admin", ...)})
kubeconfig = server.kubeconfig(tmp_path / "kubeconfig", token="admin-token")
result = run_kubectl("1.32", kubeconfig, "get", "pods")
server.audit_events()
server.stop()
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_token_file(path: Path, tokens: Mapping[str, tuple[str, str, Sequence[str]]]) -> Path:
    """tokens: token -> (user, uid, groups), written like kube-apiserver's --token-auth-file."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for token, (user, uid, groups) in tokens.items():
        writer.writerow([token, user, uid, ",".join(groups)])
    path.write_text(buf.getvalue())
    return path


@dataclass
class StandInProcess:
    workdir: Path
    process: subprocess.Popen[bytes]
    url: str
    ca_file: Path
    audit_log: Path
    log_file: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        tokens: Mapping[str, tuple[str, str, Sequence[str]]] | None = None,
        args: Iterable[str] = (),
        objects: Iterable[Mapping[str, Any]] = (),
        authorization_mode: str = "RBAC",
        timeout: float = 15.0,
    ) -> StandInProcess:
        """tokens: token -> (user, uid, groups) (the token file); objects: created at start
        (`--bootstrap-objects`: RBAC roles and bindings, namespaces, anything served);
        authorization_mode: RBAC (default, as a real cluster) or AlwaysAllow."""
        workdir.mkdir(parents=True, exist_ok=True)
        ready = workdir / "ready.json"
        ready.unlink(missing_ok=True)
        audit_log = workdir / "audit.log"
        cmd = [
            sys.executable,
            "-m",
            "standin",
            "--dir",
            str(workdir),
            "--listen",
            "127.0.0.1:0",
            "--audit-log",
            str(audit_log),
            *args,
        ]
        if tokens is not None:
            cmd += ["--token-auth-file", str(write_token_file(workdir / "tokens.csv", tokens))]
        cmd += ["--authorization-mode", authorization_mode]
        docs = [dict(o) for o in objects]
        if docs:
            path = workdir / "bootstrap-objects.yaml"
            path.write_text(yaml.safe_dump_all(docs))
            cmd += ["--bootstrap-objects", str(path)]
        log_file = workdir / "server.log"
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if process.poll() is not None:
                raise RuntimeError(f"stand-in exited early:\n{log_file.read_text()}")
            if time.monotonic() > deadline:
                process.kill()
                raise TimeoutError(f"stand-in not ready after {timeout}s:\n{log_file.read_text()}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        server = cls(workdir, process, info["url"], Path(info["ca_file"]), audit_log, log_file)
        server.extra["command"] = cmd
        return server

    def restart(self, timeout: float = 15.0) -> None:
        """Stop the server and start it again on the same address, with the same CA
        (kept in ``workdir``), flags and tokens; what it stored is gone, as when a real
        API server's etcd is wiped (the stand-in keeps its objects in memory)."""
        self.stop()
        host_port = self.url.removeprefix("https://")
        ready = self.workdir / "ready.json"
        ready.unlink(missing_ok=True)
        cmd = [*self.extra["command"], "--listen", host_port]
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"stand-in exited early:\n{self.log_file.read_text()}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise TimeoutError(f"stand-in not ready after {timeout}s")
            time.sleep(0.05)

    def kubeconfig(
        self,
        path: Path,
        *,
        token: str | None = None,
        client_cert: tuple[Path, Path] | None = None,
        namespace: str = "default",
    ) -> Path:
        user: dict[str, Any] = {}
        if token is not None:
            user["token"] = token
        if client_cert is not None:
            user["client-certificate"] = str(client_cert[0])
            user["client-key"] = str(client_cert[1])
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "standin",
                    "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": "user", "user": user}],
            "contexts": [
                {
                    "name": "standin",
                    "context": {"cluster": "standin", "user": "user", "namespace": namespace},
                }
            ],
            "current-context": "standin",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def audit_events(self) -> list[dict[str, Any]]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line]

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


def kubectl_env(home: Path) -> dict[str, str]:
    """An environment with its own HOME (so kubectl's discovery cache is private)."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["HOME"] = str(home)
    return env


def run_kubectl(
    binary: str,
    kubeconfig: Path,
    *args: str,
    home: Path | None = None,
    stdin: str | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    home = home or kubeconfig.parent / f"home-{Path(binary).name}"
    return subprocess.run(
        [binary, "--kubeconfig", str(kubeconfig), "--request-timeout=10s", *args],
        env=kubectl_env(home),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def running_standin(
    workdir: Path, **kwargs: Any
) -> Any:  # pragma: no cover - convenience for interactive use
    server = StandInProcess.start(workdir, **kwargs)
    try:
        yield server
    finally:
        server.stop()

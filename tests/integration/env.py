"""Real processes for end-to-end tests: the gateway, agents, and a JSON client for /v3."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "correct-horse-battery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """A process's resident memory (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _socket_table() -> dict[str, str]:
    """Socket inode -> what it is, from the kernel's TCP and Unix tables."""
    names: dict[str, str] = {}
    states = {"01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT", "0A": "LISTEN"}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                local = int(cols[1].rsplit(":", 1)[1], 16)
                remote = int(cols[2].rsplit(":", 1)[1], 16)
                state = states.get(cols[3], cols[3])
                names[cols[9]] = f"tcp :{local} -> :{remote} {state}"
    with contextlib.suppress(OSError), open("/proc/net/unix") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            names[cols[6]] = "unix " + (cols[7] if len(cols) > 7 else "(unnamed)")
    return names


def descriptors(pid: int) -> list[str]:
    """What each of a process's open descriptors is (a file's path, a socket's ports):
    for a leak's message."""
    table: dict[str, str] | None = None
    found = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            table = _socket_table() if table is None else table
            target = table.get(target[8:-1], target)
        found.append(f"{fd}: {target}")
    return found


def wait_until(predicate: Any, timeout: float, message: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(message)
        time.sleep(interval)


def _stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            # Its whole process group (each is started in a session of its own): a
            # supervisor killed alone would leave its workers running.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.kill()
            process.wait(timeout)


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass
class Api:
    """A small synchronous client for the gateway's JSON API."""

    base: str
    ca_file: Path
    token: str = ""

    def _ctx(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        bearer = self.token if token is None else token
        if bearer:
            request.add_header("Authorization", f"Bearer {bearer}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=self._ctx(), timeout=15) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise ApiError(exc.code, parsed) from None
        return json.loads(raw) if raw else None

    def get(self, path: str, **kw: Any) -> Any:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.call("POST", path, body if body is not None else {}, **kw)

    def put(self, path: str, body: Any, **kw: Any) -> Any:
        return self.call("PUT", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.call("DELETE", path, **kw)

    def as_user(self, token: str) -> Api:
        return Api(self.base, self.ca_file, token)

    def login(self, username: str, password: str) -> str:
        result = self.post(
            "/v3-public/localProviders/local?action=login",
            {"username": username, "password": password},
            token="",
        )
        return str(result["token"])


@dataclass
class Gateway:
    state_dir: Path
    port: int
    log_file: Path
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    ca_path: Path | None = None
    """The CA that verifies the gateway, when it is not generated in its state dir."""
    cwd: Path = REPO_ROOT
    """Where ``python -m herdgate`` runs: the code it imports (benchmarks compare commits)."""
    program: list[str] = field(default_factory=lambda: ["-m", "herdgate"])
    """What runs ``gateway ...`` (bench.tunnel_memory: ``-m bench.tracemem DIR``)."""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.ca_path or self.state_dir / "tls" / "ca.crt"

    def start(self, timeout: float = 20.0) -> Gateway:
        env = {**os.environ, "HERDGATE_BOOTSTRAP_PASSWORD": ADMIN_PASSWORD, **self.extra_env}
        cmd = [
            sys.executable, *self.program, "gateway",
            "--listen", f"127.0.0.1:{self.port}",
            "--state-dir", str(self.state_dir),
            "--server-url", self.url,
            *self.extra_args,
        ]  # fmt: skip
        # Its folder may not exist yet: a world starts the gateway and the stand-in (which
        # makes the world's folder) side by side.
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            cmd, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        try:
            wait_until(self._healthy, timeout, f"gateway not healthy:\n{self.log()}")
        except BaseException:
            # A gateway that did not come up in time is stopped here: its caller never
            # gets it to stop (a supervisor left running restarts its workers for ever).
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"gateway exited:\n{self.log()}")
        if not self.ca_file.exists():
            return False
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            with urllib.request.urlopen(self.url + "/healthz", context=ctx, timeout=2) as r:
                return bool(r.status == 200)
        except (OSError, ssl.SSLError):
            return False

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def api(self, token: str = "") -> Api:
        return Api(self.url, self.ca_file, token)

    def admin(self) -> Api:
        api = self.api()
        api.token = api.login("admin", ADMIN_PASSWORD)
        return api


@dataclass
class Agent:
    command: list[str]
    log_file: Path
    process: subprocess.Popen[bytes] | None = None
    cwd: Path = REPO_ROOT

    def start(self) -> Agent:
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            self.command, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        return self

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None


def agent_command(command_line: str, kubeconfig: Path, *extra: str) -> list[str]:
    """The ``herdgate agent ...`` line the gateway printed (the registration token's
    ``command`` also holds a ``kubectl apply -f`` line), run with this Python."""
    lines = [line for line in command_line.splitlines() if line.startswith("herdgate agent")]
    assert len(lines) == 1, command_line
    parts = lines[0].split()
    assert parts[:2] == ["herdgate", "agent"], command_line
    return [sys.executable, "-m", "herdgate", *parts[1:], "--kubeconfig", str(kubeconfig), *extra]


def write_kubeconfig(path: Path, config_yaml: str) -> Path:
    yaml.safe_load(config_yaml)  # it must parse
    path.write_text(config_yaml)
    path.chmod(0o600)
    return path


def kubectl_run(
    binary: str,
    kubeconfig: Path,
    *args: str,
    stdin: str | None = None,
    timeout: float = 30.0,
    home: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    home = home or kubeconfig.parent / f"home-{Path(binary).name}"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["HOME"] = str(home)
    return subprocess.run(
        [binary, "--kubeconfig", str(kubeconfig), "--request-timeout=15s", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def kubectl_background(
    binary: str, kubeconfig: Path, *args: str, home_name: str, stdin: bool = False
) -> Iterator[subprocess.Popen[str]]:
    """A long-running kubectl (watch, logs -f, port-forward, exec -i with ``stdin``),
    killed and reaped on exit."""
    home = kubeconfig.parent / home_name
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["HOME"] = str(home)
    with subprocess.Popen(
        [binary, "--kubeconfig", str(kubeconfig), *args],
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            yield proc
        finally:
            proc.kill()
            proc.wait()

"""herdgate's processes for the benchmarks: the gateway, clusters, users, agents.

Everything goes through the real management API and the real CLI, as in the integration
tests (``tests/integration/env.py``): the gateway is ``python -m herdgate gateway``, a
cluster and its registration token are created with ``POST /v3/...``, the agent is the
command the gateway printed plus ``--kubeconfig`` pointing at a benchmark backend.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from datetime import datetime
from pathlib import Path

import yaml

from tests.integration.env import (
    Agent,
    Api,
    Gateway,
    agent_command,
    free_port,
    wait_until,
)

USER = "bench"
USER_PASSWORD = "bench-user-password-123"
AGENT_BACKEND_TOKEN = "bench-agent-token"
_CONNECTED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO gateway\.tunnels: agent connected"
)


def start_gateway(tmp: Path, name: str = "gateway") -> Gateway:
    return Gateway(tmp / name, free_port(), tmp / f"{name}.log").start(timeout=60)


def backend_kubeconfig(path: Path, server_url: str, ca_file: Path, token: str) -> Path:
    """A kubeconfig for an agent: the benchmark backend's URL and CA, any bearer token."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "backend",
                "cluster": {
                    "server": server_url,
                    "certificate-authority-data": base64.b64encode(ca_file.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": "agent", "user": {"token": token}}],
        "contexts": [{"name": "backend", "context": {"cluster": "backend", "user": "agent"}}],
        "current-context": "backend",
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


def create_cluster(admin: Api, name: str) -> str:
    return str(admin.post("/v3/clusters", {"name": name})["id"])


def registration(admin: Api, cluster_id: str) -> tuple[str, str]:
    """(token, the ``herdgate agent ...`` command line) for one cluster."""
    reg = admin.post("/v3/clusterregistrationtokens", {"clusterId": cluster_id})
    return str(reg["token"]), str(reg["command"])


def member_token(gateway: Gateway, admin: Api, cluster_id: str) -> str:
    """A non-admin user bound as ``cluster-member``; the token of its generated kubeconfig."""
    users = admin.get("/v3/users")["data"]
    user = next((u for u in users if u.get("username") == USER), None)
    if user is None:
        user = admin.post("/v3/users", {"username": USER, "password": USER_PASSWORD})
    admin.post(
        "/v3/clusterroletemplatebindings",
        {"clusterId": cluster_id, "userId": user["id"], "roleTemplateId": "cluster-member"},
    )
    api = gateway.api()
    api.token = api.login(USER, USER_PASSWORD)
    config = api.post(f"/v3/clusters/{cluster_id}?action=generateKubeconfig")["config"]
    return str(yaml.safe_load(config)["users"][0]["user"]["token"])


def start_agent(
    tmp: Path,
    admin: Api,
    cluster_id: str,
    kubeconfig: Path,
    name: str,
    max_streams: int | None = None,
    cwd: Path | None = None,
) -> Agent:
    """The agent as a process, exactly as the gateway told us to run it."""
    _, command = registration(admin, cluster_id)
    extra: list[str] = []
    if max_streams is not None:
        config = tmp / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"tunnel": {"max_streams": max_streams}}))
        extra = ["--config", str(config)]
    agent = Agent(agent_command(command, kubeconfig, *extra), tmp / f"{name}.log")
    if cwd is not None:
        agent.cwd = cwd
    agent.start()
    wait_until(
        lambda: admin.get(f"/v3/clusters/{cluster_id}")["state"] == "active",
        30,
        f"cluster {cluster_id} never became active: {(tmp / f'{name}.log').read_text()[-2000:]}",
        interval=0.1,
    )
    return agent


def connected_times(log_file: Path, since: float = 0.0) -> list[float]:
    """Wall-clock times of the gateway's "agent connected" log lines (ms resolution)."""
    out: list[float] = []
    with log_file.open(errors="replace") as handle:
        for line in handle:
            match = _CONNECTED.match(line)
            if match:
                when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if when >= since:
                    out.append(when)
    return out


def stopping_steps(log_file: Path, since: float = 0.0) -> list[str]:
    """The gateway's "stopping: ... took N s" lines logged since ``since`` (wall clock; the
    JSON log's times are whole seconds, so from the second ``since`` falls in)."""
    out: list[str] = []
    with log_file.open(errors="replace") as handle:
        for line in handle:
            if "stopping: " not in line:
                continue
            try:
                entry = json.loads(line)
                when = datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S").timestamp()
                message = str(entry["message"])
            except (ValueError, KeyError, TypeError):
                continue
            if when >= int(since) and message.startswith("stopping: "):
                out.append(message)
    return out


def git_commit(repo: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    commit = out.stdout.strip() or "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no",
         "--", "gateway", "tunnel", "config", "herdgate"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return commit + (" + uncommitted changes" if dirty else "")

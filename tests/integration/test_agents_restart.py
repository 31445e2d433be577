"""Many agents come back after a gateway restart, and none fails a dial once it is up.

The functional half of figure 6 (docs/benchmarks.md; the figures themselves, at 10,000
agents, are ``python -m bench --only agents``): real ``tunnel.agent.Agent`` instances in
one process (``bench.agents``, which reports each agent's tunnel going up and down and
each failed dial), a real gateway stopped with SIGTERM (GOAWAY to every agent) and
started again on the same port and state.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.env import REPO_ROOT, Gateway, free_port, wait_until

pytestmark = pytest.mark.integration

AGENTS = 40
SPREAD_S = 2.0


class Agents:
    """``python -m bench.agents`` and the events it prints."""

    def __init__(self, spec: Path, log: Path) -> None:
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.agents", "--spec", str(spec)],
                cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
            )  # fmt: skip
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError), self._lock:
                self.events.append(json.loads(line))

    def since(self, kind: str, t: float) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["e"] == kind and e["t"] >= t]

    def up_since(self, t: float) -> set[int]:
        return {int(e["a"]) for e in self.since("up", t)}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._reader.join(5)
        assert self.process.stdout is not None
        self.process.stdout.close()


def test_agents_come_back_after_a_restart_without_a_failed_dial(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path / "gateway", free_port(), tmp_path / "gateway.log").start(60)
    agents: Agents | None = None
    try:
        admin = gateway.admin()
        tokens = []
        for index in range(AGENTS):
            cluster = admin.post("/v3/clusters", {"name": f"restart-{index:02d}"})
            reg = admin.post("/v3/clusterregistrationtokens", {"clusterId": cluster["id"]})
            tokens.append(reg["token"])
        # Nothing is asked of the clusters' API servers here: an address nothing listens on.
        kubeconfig = tmp_path / "agents.kubeconfig"
        ca = base64.b64encode(gateway.ca_file.read_bytes()).decode()
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9",
                                                   "certificate-authority-data": ca}}],
            "users": [{"name": "u", "user": {"token": "unused"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        }))  # fmt: skip
        kubeconfig.chmod(0o600)
        spec = tmp_path / "agents.json"
        spec.write_text(json.dumps({
            "server": gateway.url, "ca_file": str(gateway.ca_file),
            "kubeconfig": str(kubeconfig), "tokens": tokens, "ramp_per_s": 0,
            "reconnect_spread_s": SPREAD_S,
        }))  # fmt: skip
        started = time.time()
        agents = Agents(spec, tmp_path / "agents.log")
        wait_until(lambda: len(agents.up_since(started)) == AGENTS, 60,
                   f"agents up: {len(agents.up_since(started))}/{AGENTS}")  # fmt: skip

        stopped = time.time()
        gateway.stop()
        # Every agent was told (GOAWAY) and lost its tunnel.
        wait_until(lambda: len({e["a"] for e in agents.since("down", stopped)}) == AGENTS, 10,
                   "not every agent saw its tunnel close")  # fmt: skip
        gateway.start(60)
        ready = time.time()
        wait_until(lambda: len(agents.up_since(stopped)) == AGENTS, 60,
                   f"agents back: {len(agents.up_since(stopped))}/{AGENTS}")  # fmt: skip

        # No dial failed once the new gateway answered: the agents spread their
        # reconnections (GOAWAY), none was refused or timed out.
        assert agents.since("retry", ready) == []
        assert agents.process.poll() is None
        # The gateway logs each tunnel a moment after the agent has it.
        wait_until(lambda: gateway.log().count("agent connected") == 2 * AGENTS, 10,
                   "the gateway did not log every tunnel twice")  # fmt: skip
    finally:
        if agents is not None:
            agents.stop()
        gateway.stop()

"""Real ``herdgate webhook`` and ``herdgate agent`` processes tell "systemd" how they are doing.

A bound AF_UNIX datagram socket stands in for systemd's notify socket: the process gets
its path in ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC=200000`` (a ping every 0.1 s), as
``Type=notify`` with ``WatchdogSec=`` would give it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ace import manifests
from tests.fixtures.notify import FakeSystemd, starts_with
from tests.integration.conftest import World
from tests.integration.env import REPO_ROOT, agent_command, free_port, wait_until
from tests.integration.webhook_env import (
    ADMIN_TOKEN,
    NAMESPACE,
    READER_TOKEN,
    WebhookProcess,
    WebhookWorld,
    apiserver_webhook_file,
    start_standin,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def sigterm(process: subprocess.Popen[bytes], log: Callable[[], str]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        raise AssertionError(f"did not stop on SIGTERM:\n{log()[-3000:]}") from None


def test_webhook_ready_once_synced_watchdog_and_stopping(
    tmp_path: Path, systemd: FakeSystemd
) -> None:
    port = free_port()
    webhook_file = apiserver_webhook_file(
        tmp_path / "authn-webhook.yaml", f"http://127.0.0.1:{port}/v1/authenticate"
    )
    standin = start_standin(tmp_path / "apiserver", webhook_file)
    webhook = WebhookProcess(
        port,
        standin.kubeconfig(tmp_path / "reader.kubeconfig", token=READER_TOKEN),
        tmp_path / "webhook.log",
        env=systemd.env(),
        log_level="info",
    )
    try:
        world = WebhookWorld(
            tmp_path,
            standin,
            webhook.start(),
            standin.kubeconfig(tmp_path / "admin.kubeconfig", token=ADMIN_TOKEN),
        )
        # Listening, but the records cannot be listed yet (no CRDs): pings, but not ready.
        wait_until(lambda: webhook.health() == 503, 10, f"no 503 first:\n{webhook.log()}")
        systemd.wait_for(starts_with("WATCHDOG=1"), 5, "WATCHDOG=1 before READY")
        assert "STATUS=listening on http://127.0.0.1" in "\n".join(systemd.poll())
        time.sleep(0.5)
        assert not any(starts_with("READY=1")(m) for m in systemd.poll()), systemd.messages

        status, body = world.api("POST", "/api/v1/namespaces", manifests.namespace(NAMESPACE))
        assert status == 201, body
        for crd in manifests.crds():
            path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
            status, body = world.api("POST", path, crd)
            assert status == 201, body
        ready = systemd.wait_for(starts_with("READY=1"), 15, "READY=1")
        assert webhook.health() == 200  # ready for systemd = ready for the API server
        assert systemd.messages[ready].startswith("READY=1\nSTATUS=serving on http://")

        # The loop keeps pinging after READY.
        count = len(systemd.poll())
        wait_until(
            lambda: systemd.poll()[count:].count("WATCHDOG=1") >= 3,
            5,
            f"too few pings after READY: {systemd.messages[count:]}",
        )

        assert webhook.process is not None
        code = sigterm(webhook.process, webhook.log)
        stopping = systemd.wait_for(starts_with("STOPPING=1"), 1, "STOPPING=1")
        assert stopping > ready
        assert code == 0, webhook.log()
        assert "Traceback" not in webhook.log(), webhook.log()
    finally:
        webhook.stop()
        standin.stop()


def test_agent_ready_with_its_first_tunnel_watchdog_and_stopping(
    world: World, tmp_path: Path, systemd: FakeSystemd
) -> None:
    command = agent_command(world.registration_command(), world.agent_kubeconfig)
    env = {**os.environ, **systemd.env(), "WATCHDOG_PID": "1"}  # someone else's watchdog
    log_file = tmp_path / "agent.log"

    def log() -> str:
        return log_file.read_text(errors="replace")

    with log_file.open("ab") as out:
        agent = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        ready = systemd.wait_for(starts_with("READY=1"), 15, f"READY=1:\n{log()}")
        assert systemd.messages[ready] == "READY=1\nSTATUS=connected to 1 of 1 gateway replicas"
        before = systemd.messages[:ready]
        assert "STATUS=loading settings and credentials" in before
        assert f"STATUS=connecting to {world.gateway.url}" in before
        # WATCHDOG_PID names another process: this one must not ping.
        time.sleep(0.5)
        assert "WATCHDOG=1" not in systemd.poll()
    finally:
        code = sigterm(agent, log)
    stopping = systemd.wait_for(starts_with("STOPPING=1"), 1, "STOPPING=1")
    assert systemd.messages[stopping] == "STOPPING=1\nSTATUS=closing tunnels"
    assert code == 0, log()


def test_agent_pings_the_watchdog(world: World, tmp_path: Path, systemd: FakeSystemd) -> None:
    command = agent_command(world.registration_command(), world.agent_kubeconfig)
    log_file = tmp_path / "agent.log"
    with log_file.open("ab") as out:
        agent = subprocess.Popen(
            command, cwd=REPO_ROOT, env={**os.environ, **systemd.env()}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        ready = systemd.wait_for(starts_with("READY=1"), 15, "READY=1")
        wait_until(
            lambda: systemd.poll()[ready:].count("WATCHDOG=1") >= 3,
            5,
            f"too few pings after READY: {systemd.messages}",
        )
    finally:
        code = sigterm(agent, lambda: log_file.read_text(errors="replace"))
    assert code == 0
    systemd.wait_for(starts_with("STOPPING=1"), 1, "STOPPING=1")

"""SIGHUP on real ``herdgate webhook`` and ``herdgate agent`` processes.

The webhook serves HTTPS; the test writes a renewed certificate over its files and
switches ``logging.level`` to debug in its config file, sends SIGHUP, and checks that a
new TLS connection sees the new certificate (by serial number) while a connection opened
before keeps working, that debug lines now appear, that settings that need a restart are
named, that a config that no longer loads changes nothing, and that "systemd" (a fake
notify socket) got RELOADING=1 then READY=1. The agent gets the same treatment for its
log level, with its tunnel staying up.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ace import manifests
from config import tls
from tests.fixtures.notify import FakeSystemd, starts_with
from tests.integration.conftest import World
from tests.integration.env import REPO_ROOT, agent_command, free_port, wait_until
from tests.integration.webhook_env import (
    ADMIN_TOKEN,
    NAMESPACE,
    READER_TOKEN,
    apiserver_webhook_file,
    http_json,
    start_standin,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


# -- helpers ----------------------------------------------------------------------------


class CA:
    def __init__(self, directory: Path) -> None:
        self.cert, self.key = tls.make_ca("webhook-test-ca")
        self.file = directory / "ca.crt"
        self.file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cert_file: Path, key_file: Path) -> int:
        """Write a server certificate for 127.0.0.1 and its key; the serial number."""
        cert, key = tls.issue_server_cert(self.cert, self.key, ["127.0.0.1"])
        pem_key = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        pem_cert = cert.public_bytes(serialization.Encoding.PEM)
        # Replaced whole (rename), as cert-manager and certbot do.
        for path, data in ((key_file, pem_key), (cert_file, pem_cert)):
            tmp = path.with_suffix(".new")
            tmp.write_bytes(data)
            tmp.chmod(0o600)
            tmp.replace(path)
        return cert.serial_number


def serial_of(der: bytes | None) -> int:
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def served_serial(port: int, ca_file: Path) -> int:
    """The serial number of the certificate a new TLS connection sees."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        return serial_of(conn.getpeercert(binary_form=True))


def log_entries(log_file: Path) -> list[dict[str, Any]]:
    """The JSON log lines so far (anything else is skipped)."""
    entries = []
    for line in log_file.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def messages(log_file: Path, level: str | None = None) -> list[str]:
    return [
        str(e.get("message", ""))
        for e in log_entries(log_file)
        if level is None or e.get("level") == level
    ]


def sighup_and_wait(
    process: subprocess.Popen[bytes], log_file: Path, systemd: FakeSystemd, done: str
) -> None:
    """SIGHUP; wait for a log message starting with ``done`` and for RELOADING=1, READY=1."""
    before_log = len(messages(log_file))
    before = len(systemd.poll())
    process.send_signal(signal.SIGHUP)
    wait_until(
        lambda: any(m.startswith(done) for m in messages(log_file)[before_log:]),
        10,
        f"no {done!r} after SIGHUP:\n{log_file.read_text(errors='replace')[-3000:]}",
    )

    def bracketed() -> bool:
        firsts = [m.split("\n")[0] for m in systemd.poll()[before:] if m != "WATCHDOG=1"]
        return firsts == ["RELOADING=1", "READY=1"]

    wait_until(bracketed, 5, f"no RELOADING=1 then READY=1: {systemd.poll()[before:]}")
    assert process.poll() is None, log_file.read_text(errors="replace")


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


# -- the webhook ------------------------------------------------------------------------


def webhook_config(
    port: int, kubeconfig: Path, cert: Path, key: Path, level: str, **extra: Any
) -> str:
    return yaml.safe_dump(
        {
            "listen": f"127.0.0.1:{port}",
            "kubeconfig": str(kubeconfig),
            "namespace": NAMESPACE,
            "tls": {"cert_file": str(cert), "key_file": str(key)},
            "backoff_initial": "100ms",
            "backoff_max": "500ms",
            "logging": {"level": level, "format": "json"},
            **extra,
        }
    )


def review(port: int, ca_file: Path, token: str) -> tuple[int, Any]:
    body = {
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "spec": {"token": token},
    }
    return http_json(f"https://127.0.0.1:{port}/v1/authenticate", "POST", body, ca_file=ca_file)


def test_webhook_sighup_reloads_certificate_and_log_level(
    tmp_path: Path, systemd: FakeSystemd
) -> None:
    port = free_port()
    ca = CA(tmp_path)
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    first = ca.issue(cert, key)
    standin = start_standin(
        tmp_path / "apiserver",
        apiserver_webhook_file(
            tmp_path / "authn.yaml", f"https://127.0.0.1:{port}/v1/authenticate"
        ),
    )
    kubeconfig = standin.kubeconfig(tmp_path / "reader.kubeconfig", token=READER_TOKEN)
    config = tmp_path / "webhook.yaml"
    config.write_text(webhook_config(port, kubeconfig, cert, key, "info"))
    log_file = tmp_path / "webhook.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERDGATE_")}
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "herdgate", "webhook", "--config", str(config)],
            cwd=REPO_ROOT, env={**env, **systemd.env()}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    kept: http.client.HTTPSConnection | None = None
    try:

        def api(path: str, body: Any) -> None:
            url = standin.url + path
            status, answer = http_json(
                url, "POST", body, token=ADMIN_TOKEN, ca_file=standin.ca_file
            )
            assert status == 201, answer

        api("/api/v1/namespaces", manifests.namespace(NAMESPACE))
        for crd in manifests.crds():
            api("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        systemd.wait_for(starts_with("READY=1"), 20, f"READY=1:\n{log_file.read_text()}")

        assert served_serial(port, ca.file) == first
        # A keep-alive connection opened before the reload.
        kept = http.client.HTTPSConnection(
            "127.0.0.1", port, context=ssl.create_default_context(cafile=str(ca.file))
        )
        kept.request("GET", "/livez")
        assert kept.getresponse().read() and kept.sock is not None
        assert serial_of(kept.sock.getpeercert(binary_form=True)) == first

        # At info, a refused unknown token is not logged.
        status, body = review(port, ca.file, "not-a-herdgate-token")
        assert status == 200 and body["status"]["authenticated"] is False
        assert not messages(log_file, "debug")

        # Renewed certificate over the same files; debug logging; a key that needs a restart.
        second = ca.issue(cert, key)
        assert second != first
        config.write_text(webhook_config(port, kubeconfig, cert, key, "debug", max_body="2MiB"))
        sighup_and_wait(process, log_file, systemd, "reloaded settings")

        assert served_serial(port, ca.file) == second
        kept.request("GET", "/livez")  # the old connection still works, with its old cert
        response = kept.getresponse()
        assert response.status == 200 and response.read()
        assert serial_of(kept.sock.getpeercert(binary_form=True)) == first

        status, body = review(port, ca.file, "not-a-herdgate-token")
        assert status == 200 and body["status"]["authenticated"] is False
        wait_until(
            lambda: any(m.startswith("token refused") for m in messages(log_file, "debug")),
            5,
            f"no debug line after the reload:\n{log_file.read_text()[-3000:]}",
        )
        warnings = messages(log_file, "warning")
        assert "reload: a restart is needed to apply max_body (the rest was applied)" in warnings
        assert any(m.startswith("reload: TLS certificate loaded from") for m in messages(log_file))

        # A config that no longer loads: reported, nothing changes, still serving.
        config.write_text(
            webhook_config(port, kubeconfig, cert, key, "info", max_body="2MiB", bogus=1)
        )
        sighup_and_wait(process, log_file, systemd, "reload: configuration error")
        errors = messages(log_file, "error")
        assert any("bogus" in m for m in errors), errors
        assert served_serial(port, ca.file) == second
        review(port, ca.file, "not-a-herdgate-token")
        wait_until(
            lambda: sum(m.startswith("token refused") for m in messages(log_file, "debug")) >= 2,
            5,
            "the level changed although the config did not load",
        )

        # The decisions so far, on the same listener.
        status, text = http_json(f"https://127.0.0.1:{port}/metrics", ca_file=ca.file)
        assert status == 200
        assert 'herdgate_webhook_decisions_total{result="denied"} 3.0' in text
        assert "herdgate_webhook_cache_synced 1.0" in text
    finally:
        if kept is not None:
            kept.close()
        code = stop(process)
        standin.stop()
    log = log_file.read_text(errors="replace")
    assert code == 0, log
    assert "Traceback" not in log, log


# -- the agent --------------------------------------------------------------------------


def agent_config(level: str, backoff_max: str = "30s") -> str:
    return yaml.safe_dump(
        {"backoff_max": backoff_max, "logging": {"level": level, "format": "json"}}
    )


def test_agent_sighup_reloads_log_level_and_keeps_its_tunnel(
    world: World, tmp_path: Path, systemd: FakeSystemd
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(agent_config("info"))
    command = agent_command(
        world.registration_command(), world.agent_kubeconfig, "--config", str(config)
    )
    log_file = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERDGATE_")}
    with log_file.open("ab") as out:
        agent = subprocess.Popen(
            command, cwd=REPO_ROOT, env={**env, **systemd.env()}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        systemd.wait_for(starts_with("READY=1"), 15, f"READY=1:\n{log_file.read_text()}")
        assert not messages(log_file, "debug")

        config.write_text(agent_config("debug", backoff_max="20s"))
        sighup_and_wait(agent, log_file, systemd, "reloaded settings")
        found = messages(log_file)
        assert "reload: log level debug" in messages(log_file, "debug"), found
        assert (
            "reload: a restart is needed to apply backoff_max (the rest was applied)"
            in messages(log_file, "warning")
        ), found
        # READY=1 after the reload carries the tunnel count: still connected.
        last = [m for m in systemd.poll() if starts_with("READY=1")(m)][-1]
        assert last == "READY=1\nSTATUS=connected to 1 of 1 gateway replicas"

        # A config that no longer loads: reported, the level stays, the agent keeps going.
        config.write_text("logging: [\n")
        sighup_and_wait(agent, log_file, systemd, "reload: configuration error")
        # backoff_max was not applied: still named. At warning, the warning is all there is.
        config.write_text(agent_config("warning", backoff_max="20s"))
        sighup_and_wait(
            agent, log_file, systemd, "reload: a restart is needed to apply backoff_max"
        )

        # One tunnel all along: never closed, never dialled again.
        found = messages(log_file)
        assert sum(m.startswith("tunnel to ") and "established" in m for m in found) == 1, found
        assert not any("closed" in m for m in found), found
        world.wait_state("active")
    finally:
        code = stop(agent)
    log = log_file.read_text(errors="replace")
    assert code == 0, log
    assert "Traceback" not in log, log

"""SIGHUP: a new TLS certificate, new auth settings and log level, without dropping anything.

The gateway runs from a config file with its own certificate. The test swaps the
certificate files, raises the log level, changes the login limits and a setting that
needs a restart, and sends SIGHUP: new connections see the new certificate while a
running watch goes on, the limits apply, a warning names the key that needs a restart,
and systemd hears RELOADING then READY. A config that no longer loads changes nothing.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from config.tls import _key_pem, issue_server_cert, make_ca
from tests.binaries import kubectl
from tests.fixtures.notify import FakeSystemd
from tests.integration.conftest import World, start_world, stop_world
from tests.integration.env import ApiError, kubectl_background, wait_until

pytestmark = pytest.mark.integration


CA = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _write_cert(directory: Path, ca: CA) -> int:
    cert, key = issue_server_cert(ca[0], ca[1], ["127.0.0.1", "localhost"])
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(_key_pem(key))
    return int(cert.serial_number)


def _served_serial(port: int, ca_file: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def _config(directory: Path, level: str, per_user: int, extra: str = "") -> str:
    return (
        f"tls:\n  cert_file: {directory / 'tls.crt'}\n  key_file: {directory / 'tls.key'}\n"
        f"  ca_file: {directory / 'ca.crt'}\n"
        f"logging:\n  level: {level}\n"
        f"auth:\n  login_failures_per_user: {per_user}\n{extra}"
    )


@pytest.fixture
def reloadable(tmp_path: Path, systemd: FakeSystemd) -> Iterator[tuple[World, Path, CA, int]]:
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = make_ca("reload test CA")
    (certs / "ca.crt").write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    serial = _write_cert(certs, ca)
    world = start_world(
        tmp_path,
        gateway_config=_config(certs, "info", 5),
        gateway_env=systemd.env(),
        gateway_ca=certs / "ca.crt",
    )
    try:
        yield world, certs, ca, serial
    finally:
        stop_world(world)


def test_sighup_reloads_tls_auth_and_log_level(
    reloadable: tuple[World, Path, CA, int], systemd: FakeSystemd
) -> None:
    world, certs, ca, first_serial = reloadable
    gateway = world.gateway
    assert gateway.process is not None
    assert _served_serial(gateway.port, certs / "ca.crt") == first_serial
    _, api = world.user("reloader", role="cluster-owner")
    kc = world.kubeconfig_for(api, "reloader")
    config = world.tmp / "gateway.yaml"

    with kubectl_background(
        kubectl("1.32"), kc, "get", "configmaps", "-w", "--output-watch-events", home_name="hw"
    ) as watch:
        # New certificate, debug logs, one failed login allowed, and a tunnel limit.
        second_serial = _write_cert(certs, ca)
        config.write_text(_config(certs, "debug", 1, "tunnel:\n  max_streams: 100\n"))
        seen = len(systemd.poll())
        os.kill(gateway.process.pid, signal.SIGHUP)
        wait_until(
            lambda: any(m.startswith("READY=1") for m in systemd.poll()[seen:]),
            10,
            "no READY after SIGHUP",
        )
        # The first message after the signal, watchdog pings aside, brackets the reload.
        after = [m for m in systemd.poll()[seen:] if m != "WATCHDOG=1"]
        assert after[0].startswith("RELOADING=1\nMONOTONIC_USEC="), after
        assert _served_serial(gateway.port, certs / "ca.crt") == second_serial
        log = gateway.log()
        assert "a restart is needed to apply tunnel.max_streams" in log
        assert '"level": "debug"' not in log.split("reloaded settings")[0]

        # Login limits changed: the second failed login for a name is refused with 429.
        codes = []
        for _ in range(2):
            try:
                gateway.api().login("reloader", "wrong-password")
            except ApiError as exc:
                codes.append(exc.status)
        assert codes == [401, 429]
        # Debug logging is on now.
        wait_until(lambda: '"level": "debug"' in gateway.log(), 5, "no debug line")
        # The watch that was running never noticed.
        assert watch.poll() is None

        # A file that does not load changes nothing.
        config.write_text("tls: [broken\n")
        seen = len(systemd.poll())
        os.kill(gateway.process.pid, signal.SIGHUP)
        wait_until(
            lambda: any(m.startswith("READY=1") for m in systemd.poll()[seen:]), 10, "no READY"
        )
        assert "configuration error, keeping the running settings" in gateway.log()
        assert _served_serial(gateway.port, certs / "ca.crt") == second_serial
        assert watch.poll() is None
